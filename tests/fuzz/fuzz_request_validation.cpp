// A request's checks on arbitrary wire bytes: GenerateRequest parsing, the server's own
// ValidateGenerateRequest (the prompt's byte limit), then the conversion to the engine's request
// and the runtime's sampling checks. Checks: what each accepts respects every limit it claims to
// enforce, and nothing downstream crashes on it.
#include <cstddef>
#include <cstdint>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "runtime/sampling/sampler.h"
#include "server/proto_conversion.h"
#include "server/request_validation.h"
#include "squat/v1/generation.pb.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

constexpr int64_t kMaxPromptBytes = 2048;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string field with invalid UTF-8; gRPC rejects those the same way.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  squat::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const absl::Status status = squat::server::ValidateGenerateRequest(request, kMaxPromptBytes);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument && !status.message().empty());
    return 0;
  }
  if (request.prompt_case() == squat::v1::GenerateRequest::kText) {
    FUZZ_CHECK(static_cast<int64_t>(request.text().size()) <= kMaxPromptBytes);
  }

  const squat::GenerateRequest engine_request = squat::server::ToEngineRequest(request, "fuzz");
  // max_tokens saturates instead of wrapping: 0 only when the request left it unset.
  FUZZ_CHECK(engine_request.sampling.max_tokens >= 0);
  FUZZ_CHECK((engine_request.sampling.max_tokens == 0) == (request.sampling().max_tokens() == 0));
  const absl::Status sampling = squat::ValidateSamplingParams(engine_request.sampling);
  if (!sampling.ok()) {
    FUZZ_CHECK(sampling.code() == absl::StatusCode::kInvalidArgument && !sampling.message().empty());
    return 0;
  }
  FUZZ_CHECK(engine_request.sampling.stop.size() <= squat::kMaxStopStrings);
  for (const std::string& stop : engine_request.sampling.stop) {
    FUZZ_CHECK(!stop.empty() && stop.size() <= squat::kMaxStopStringBytes);
  }
  FUZZ_CHECK(engine_request.sampling.stop_token_ids.size() <= squat::kMaxStopTokenIds);
  return 0;
}
