// Server transport credentials from the TLS flags: plaintext, TLS, or mutual TLS (client
// certificates required and verified against a CA bundle), with the optional bearer-token
// check attached.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"
#include "server/server_flags_security.h"

namespace squat::server {

// Reads the PEM files now so that a missing or malformed file stops the server at start
// with the path in the message (gRPC would only fail the handshakes later).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> BuildServerCredentials(
    const SecurityOptions& options);

// A PEM file's text; FAILED_PRECONDITION naming `what` and the path when it cannot be read
// or holds no "-----BEGIN <label>" block (label: "CERTIFICATE", or "" for a key of any kind).
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& what,
                                        const std::string& label);

}  // namespace squat::server
