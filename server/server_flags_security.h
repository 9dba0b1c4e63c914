// squat-server's transport-security and resource-limit flags (TLS, mutual TLS, bearer
// token, message and prompt size, memory budget). They are parsed together with the other
// flags by ParseServerCommandLine; this reads and validates them.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace squat::server {

struct SecurityOptions {
  std::string tls_cert_path;       // PEM server certificate chain; empty: plaintext
  std::string tls_key_path;        // PEM private key of tls_cert_path
  std::string tls_client_ca_path;  // PEM CA bundle; set: clients must present a cert it signed
  std::string auth_token_file;     // file holding the bearer token; empty: no token check
  int64_t max_message_bytes = 0;   // largest request message accepted
  int64_t max_prompt_bytes = 0;    // largest text prompt accepted
  int32_t max_prompt_tokens = 0;   // 0: the model's length - 1
  int64_t max_memory_bytes = 0;    // 0: no explicit budget (CPU still checks free memory)
  bool tls() const { return !tls_cert_path.empty(); }
};

// Call after ParseServerCommandLine. INVALID_ARGUMENT names the flag at fault.
absl::StatusOr<SecurityOptions> ReadSecurityFlags();

}  // namespace squat::server
