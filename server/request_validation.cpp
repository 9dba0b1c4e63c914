#include "server/request_validation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace squat::server {

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits) {
  const bool has_ids =
      request.prompt_case() == v1::GenerateRequest::kTokenIds && request.token_ids().ids_size() > 0;
  const bool has_text = request.prompt_case() == v1::GenerateRequest::kText && !request.text().empty();
  if (!has_ids && !has_text) return absl::InvalidArgumentError("prompt is empty");
  if (has_text && limits.max_prompt_bytes > 0 &&
      static_cast<int64_t>(request.text().size()) > limits.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", request.text().size(),
                                                   " bytes; the server limit is ",
                                                   limits.max_prompt_bytes, " (--max-prompt-bytes)"));
  }

  const uint32_t max_tokens = request.sampling().max_tokens();
  if (max_tokens > static_cast<uint32_t>(limits.max_tokens_limit)) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens ", max_tokens,
                                                   " exceeds the server limit of ",
                                                   limits.max_tokens_limit));
  }

  const v1::SamplingParams& sampling = request.sampling();
  if (sampling.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop has ", sampling.stop_size(),
                                                   " strings; at most ", kMaxStopStrings, " are allowed"));
  }
  for (int i = 0; i < sampling.stop_size(); ++i) {
    if (sampling.stop(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "] has ", sampling.stop(i).size(),
                                                     " bytes; at most ", kMaxStopStringBytes,
                                                     " are allowed"));
    }
  }
  if (sampling.stop_token_ids_size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop_token_ids has ",
                                                   sampling.stop_token_ids_size(), " ids; at most ",
                                                   kMaxStopTokenIds, " are allowed"));
  }

  const std::string& method = request.kv_cache().method();
  if (!method.empty() &&
      std::find(limits.kv_methods.begin(), limits.kv_methods.end(), method) ==
          limits.kv_methods.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown kv_cache.method '", method,
                                                   "'; known formats: ",
                                                   absl::StrJoin(limits.kv_methods, ", ")));
  }
  return absl::OkStatus();
}

}  // namespace squat::server
