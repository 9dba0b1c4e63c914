#include "server/token_auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace squat::server {

absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read --auth-token-file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  const std::string token(absl::StripAsciiWhitespace(text.str()));
  if (token.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("--auth-token-file '", path, "' is empty"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--auth-token-file '", path, "': the token must be printable ASCII without spaces"));
    }
  }
  return token;
}

bool IsUnauthenticatedMethod(const std::string& method_path) {
  return absl::StartsWith(method_path, "/grpc.health.v1.Health/");
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

grpc::Status BearerTokenAuthProcessor::Process(const InputMetadata& auth_metadata,
                                               grpc::AuthContext* context,
                                               OutputMetadata* consumed_auth_metadata,
                                               OutputMetadata* response_metadata) {
  const auto path = auth_metadata.find(":path");
  if (path != auth_metadata.end() &&
      IsUnauthenticatedMethod(std::string(path->second.data(), path->second.size()))) {
    return grpc::Status::OK;
  }
  const auto [first, last] = auth_metadata.equal_range("authorization");
  if (first == last) {
    return {grpc::StatusCode::UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"};
  }
  bool matched = false;
  for (auto it = first; it != last; ++it) {
    const std::string value(it->second.data(), it->second.size());
    if (ConstantTimeEquals(value, expected_)) matched = true;
  }
  if (!matched) return {grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token"};
  // Handlers (and their logs) never see the token.
  for (auto it = first; it != last; ++it) {
    consumed_auth_metadata->insert({std::string(it->first.data(), it->first.size()),
                                    std::string(it->second.data(), it->second.size())});
  }
  return grpc::Status::OK;
}

}  // namespace squat::server
