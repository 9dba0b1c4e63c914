#include "server/request_validation.h"

#include "absl/strings/str_cat.h"

namespace squat::server {

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, int64_t max_prompt_bytes) {
  if (request.prompt_case() == v1::GenerateRequest::kText && max_prompt_bytes > 0 &&
      static_cast<int64_t>(request.text().size()) > max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", request.text().size(),
                                                   " bytes; the server limit is ", max_prompt_bytes,
                                                   " (--max-prompt-bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace squat::server
