// The KV formats squat-eval compares, with the engine's parameter defaults.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"
#include "tools/eval/eval_options.h"

namespace squat::eval {

struct EvalFormat {
  std::string label;  // "fp16", "kivi2", "squat-post4", "squat-k2v4" (when value bits differ), ...
  kv::KvFormat format;
};

// fp16 (the reference) first, then every quantized method of options.methods at every
// options.bits (K and V alike unless options.v_bits is set). Parameters resolve as
// runtime/engine/engine.cpp's DefaultKvFormat does: block_size 0 means head_dim / 2. Errors name an
// unknown method or an invalid format.
absl::StatusOr<std::vector<EvalFormat>> BuildFormats(const EvalOptions& options, int64_t head_dim);

// "G 32, R 32, g 32, r 60 (capped at d = 64: 60), lambda 0.001, ..." for the log and the report.
std::string DescribeSettings(const EvalOptions& options, int64_t head_dim);

}  // namespace squat::eval
