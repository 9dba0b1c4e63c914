// Transport security of the clients' channel to squat-server: plaintext, TLS (server
// verified against a CA file or the system roots), mutual TLS (client certificate), and a
// bearer token sent as "authorization: Bearer <token>" on every call. squat-cli and
// squat-bench share the flags and the channel construction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/flag_table.h"

namespace squat::client {

struct ChannelSecurity {
  bool tls = false;              // --tls: TLS, server verified against the system's CA roots
  std::string ca_path;           // --tls-ca: verify the server against this PEM bundle instead
  std::string cert_path;         // --tls-cert: client certificate (mutual TLS)
  std::string key_path;          // --tls-key: its private key
  std::string server_name;       // --tls-server-name: name to verify instead of the address host
  std::string auth_token;        // --auth-token
  std::string auth_token_file;   // --auth-token-file
  bool uses_tls() const { return tls || !ca_path.empty() || !cert_path.empty(); }
};

using SecurityFlag = flags::FlagSpec<ChannelSecurity>;

// The flags above, for each client's flag table.
const std::vector<SecurityFlag>& SecurityFlags();

// Combinations that cannot work: --tls-cert without --tls-key (or the reverse), both token
// flags, a token or a server name without TLS (a token must never travel in plaintext).
absl::Status ValidateChannelSecurity(const ChannelSecurity& security);

// Reads the PEM and token files; FAILED_PRECONDITION naming the file when one is unusable.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const std::string& address,
                                                                   const ChannelSecurity& security);

}  // namespace squat::client
