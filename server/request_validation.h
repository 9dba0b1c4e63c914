// The checks that belong to the server, not the engine: limits on what crosses the wire before
// the engine sees it. Everything about the request's content (prompt, max_tokens, sampling, KV
// format) is validated once, by Engine::Submit.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "squat/v1/generation.pb.h"

namespace squat::server {

// INVALID_ARGUMENT when a text prompt has more than max_prompt_bytes bytes (0: no limit), so
// that an oversized prompt is refused before it is tokenized.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, int64_t max_prompt_bytes);

}  // namespace squat::server
