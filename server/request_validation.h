// Checks the server does before handing a request to the engine, so that the client gets
// a clear INVALID_ARGUMENT naming the server-side limit (the engine validates again).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "squat/v1/generation.pb.h"

namespace squat::server {

struct RequestLimits {
  int32_t max_tokens_limit = 0;
  std::vector<std::string> kv_methods;  // the formats this engine serves
};

// Empty prompt, max_tokens above the limit, unknown kv_cache.method.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits);

}  // namespace squat::server
