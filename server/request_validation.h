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
  int64_t max_prompt_bytes = 0;         // text prompts longer than this are refused; 0: no limit
};

// Per-request bounds on what the stop-matching work may cost every decoded token.
inline constexpr int kMaxStopStrings = 64;
inline constexpr size_t kMaxStopStringBytes = 1024;
inline constexpr int kMaxStopTokenIds = 1024;

// Empty prompt, text prompt above max_prompt_bytes, max_tokens above the limit, too many or
// too long stop strings, too many stop token ids, unknown kv_cache.method.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits);

}  // namespace squat::server
