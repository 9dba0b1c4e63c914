// The server's request checks on arbitrary wire bytes: GenerateRequest parsing, then
// ValidateGenerateRequest, then (for accepted requests) the conversion to the engine's
// request and the sampler's parameter checks. Checks: what validation accepts respects
// every limit it claims to enforce, and nothing downstream crashes on it.
#include <cstddef>
#include <cstdint>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "runtime/sampler.h"
#include "server/proto_conversion.h"
#include "server/request_validation.h"
#include "squat/v1/generation.pb.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

constexpr int32_t kMaxTokensLimit = 4096;
constexpr int64_t kMaxPromptBytes = 2048;

const squat::server::RequestLimits& Limits() {
  static const squat::server::RequestLimits limits = [] {
    squat::server::RequestLimits l;
    l.max_tokens_limit = kMaxTokensLimit;
    l.kv_methods = {"squat", "squat-post", "kivi", "fp16"};
    l.max_prompt_bytes = kMaxPromptBytes;
    return l;
  }();
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string field with invalid UTF-8; gRPC rejects those the same way.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  squat::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const absl::Status status = squat::server::ValidateGenerateRequest(request, Limits());
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument && !status.message().empty());
    return 0;
  }
  const bool text_prompt = request.prompt_case() == squat::v1::GenerateRequest::kText;
  FUZZ_CHECK(text_prompt ? !request.text().empty() : request.token_ids().ids_size() > 0);
  if (text_prompt) FUZZ_CHECK(static_cast<int64_t>(request.text().size()) <= kMaxPromptBytes);
  FUZZ_CHECK(request.sampling().max_tokens() <= static_cast<uint32_t>(kMaxTokensLimit));
  FUZZ_CHECK(request.sampling().stop_size() <= squat::server::kMaxStopStrings);
  FUZZ_CHECK(request.sampling().stop_token_ids_size() <= squat::server::kMaxStopTokenIds);

  const squat::GenerateRequest engine_request =
      squat::server::ToEngineRequest(request, "fuzz", /*default_max_tokens=*/16);
  FUZZ_CHECK(engine_request.sampling.max_tokens >= 1 && engine_request.sampling.max_tokens <= kMaxTokensLimit);
  const absl::Status sampling = squat::ValidateSamplingParams(engine_request.sampling);
  if (!sampling.ok()) FUZZ_CHECK(!sampling.message().empty());
  return 0;
}
