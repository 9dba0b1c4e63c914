#include "client/channel_security.h"

#include <fstream>
#include <sstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace squat::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("--", flag, ": cannot read '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::string> ReadToken(const ChannelSecurity& s) {
  if (s.auth_token_file.empty()) return s.auth_token;
  absl::StatusOr<std::string> text = ReadFile(s.auth_token_file, "auth-token-file");
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("--auth-token-file: '", s.auth_token_file, "' is empty"));
  }
  return token;
}

}  // namespace

const std::vector<SecurityFlag>& SecurityFlags() {
  static const std::vector<SecurityFlag> flags = {
      {"tls", true, "use TLS, verifying the server against the system's CA roots",
       flags::Bool("tls", &ChannelSecurity::tls)},
      {"tls-ca", false, "PEM CA bundle to verify the server with (implies TLS)", flags::String(&ChannelSecurity::ca_path)},
      {"tls-cert", false, "PEM client certificate for mutual TLS (implies TLS; with --tls-key)",
       flags::String(&ChannelSecurity::cert_path)},
      {"tls-key", false, "PEM private key of --tls-cert", flags::String(&ChannelSecurity::key_path)},
      {"tls-server-name", false, "server name to verify in its certificate (default: the address host)",
       flags::String(&ChannelSecurity::server_name)},
      {"auth-token", false, "bearer token sent on every call (needs TLS)", flags::String(&ChannelSecurity::auth_token)},
      {"auth-token-file", false, "file holding the bearer token (needs TLS)",
       flags::String(&ChannelSecurity::auth_token_file)},
  };
  return flags;
}

absl::Status ValidateChannelSecurity(const ChannelSecurity& s) {
  if (s.cert_path.empty() != s.key_path.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!s.auth_token.empty() && !s.auth_token_file.empty()) {
    return absl::InvalidArgumentError("give --auth-token or --auth-token-file, not both");
  }
  if (!s.uses_tls() && (!s.auth_token.empty() || !s.auth_token_file.empty())) {
    return absl::InvalidArgumentError(
        "a bearer token needs TLS (--tls or --tls-ca): it must not travel in plaintext");
  }
  if (!s.uses_tls() && !s.server_name.empty()) {
    return absl::InvalidArgumentError("--tls-server-name needs TLS (--tls or --tls-ca)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const std::string& address,
                                                                   const ChannelSecurity& s) {
  if (absl::Status valid = ValidateChannelSecurity(s); !valid.ok()) return valid;
  if (!s.uses_tls()) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());

  grpc::SslCredentialsOptions ssl;
  if (!s.ca_path.empty()) {  // empty roots: gRPC uses the system's
    absl::StatusOr<std::string> ca = ReadFile(s.ca_path, "tls-ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (!s.cert_path.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(s.cert_path, "tls-cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(s.key_path, "tls-key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(ssl);
  absl::StatusOr<std::string> token = ReadToken(s);
  if (!token.ok()) return token.status();
  if (!token->empty()) {
    // Sends "authorization: Bearer <token>" with every call on this channel.
    credentials = grpc::CompositeChannelCredentials(credentials, grpc::AccessTokenCredentials(*token));
  }
  grpc::ChannelArguments args;
  if (!s.server_name.empty()) args.SetSslTargetNameOverride(s.server_name);
  return grpc::CreateCustomChannel(address, credentials, args);
}

}  // namespace squat::client
