// The file name contains "server_flags" so that --help lists these flags (server_flags.cpp
// restricts the usage text to such files).
#include "server/server_flags_security.h"

#include <limits>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server; enables TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key matching --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; enables mutual TLS: clients must present a certificate it signed");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token; every call except grpc.health.v1 must send "
          "'authorization: Bearer <token>' (needs TLS)");
ABSL_FLAG(int64_t, max_message_bytes, 4 << 20,
          "Largest request message in bytes; larger ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_prompt_bytes, 1 << 20,
          "Largest text prompt in bytes; longer prompts get INVALID_ARGUMENT");
ABSL_FLAG(int32_t, max_prompt_tokens, 0,
          "Longest prompt in tokens (INVALID_ARGUMENT beyond); 0: the model's length - 1");
ABSL_FLAG(int64_t, max_memory_mib, 0,
          "Memory budget for weights + KV pool in MiB, checked before loading; 0: on CPU the "
          "available host memory (cgroup limit included), on CUDA no check");

namespace squat::server {

absl::StatusOr<SecurityOptions> ReadSecurityFlags() {
  SecurityOptions o;
  o.tls_cert_path = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_path = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca_path = absl::GetFlag(FLAGS_tls_client_ca);
  o.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  o.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  const int64_t max_memory_mib = absl::GetFlag(FLAGS_max_memory_mib);

  if (o.tls_cert_path.empty() != o.tls_key_path.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls_client_ca_path.empty() && !o.tls()) {
    return absl::InvalidArgumentError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  // A bearer token sent in plaintext can be read and replayed by anyone on the path.
  if (!o.auth_token_file.empty() && !o.tls()) {
    return absl::InvalidArgumentError("--auth-token-file needs TLS (--tls-cert and --tls-key)");
  }
  // gRPC takes an int; -1 would mean unlimited, which this server never wants.
  if (o.max_message_bytes <= 0 || o.max_message_bytes > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-message-bytes must be in [1, ", std::numeric_limits<int32_t>::max(), "]"));
  }
  if (o.max_prompt_bytes <= 0) return absl::InvalidArgumentError("--max-prompt-bytes must be > 0");
  if (max_memory_mib < 0 || max_memory_mib > (std::numeric_limits<int64_t>::max() >> 20)) {
    return absl::InvalidArgumentError("--max-memory-mib must be >= 0 and fit 64-bit bytes");
  }
  o.max_memory_bytes = max_memory_mib << 20;
  return o;
}

}  // namespace squat::server
