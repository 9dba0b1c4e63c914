// Bearer-token check on every call, before any handler runs: gRPC passes each call's
// metadata to the processor, which answers UNAUTHENTICATED unless it carries
// "authorization: Bearer <token>". grpc.health.v1 stays open (load balancers and
// Kubernetes probes carry no token).
#pragma once

#include <string>

#include <grpcpp/security/auth_metadata_processor.h>

#include "absl/status/statusor.h"

namespace squat::server {

// The token in `path` without surrounding whitespace. It must be non-empty printable ASCII
// without spaces (what an HTTP/2 header value can carry).
absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path);

// Whether a call to this method (":path", e.g. "/grpc.health.v1.Health/Check") needs no token.
bool IsUnauthenticatedMethod(const std::string& method_path);

// Equality in time that depends on the lengths only, not on where the first difference is.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

class BearerTokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit BearerTokenAuthProcessor(std::string token) : expected_("Bearer " + std::move(token)) {}

  // Process is a cheap comparison; it runs on gRPC's own thread.
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const std::string expected_;
};

}  // namespace squat::server
