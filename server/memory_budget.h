// The start-up memory check: before the engine allocates anything, squat-server estimates
// what the model's weights (from config.json, in the dtype they will be loaded in) and the
// KV page pool will take and refuses to start when that exceeds the budget, instead of
// dying later in an allocation (or of the kernel's OOM killer).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine.h"

namespace squat::server {

struct ServingMemoryEstimate {
  int64_t weight_bytes = 0;   // parameters x the element size they are loaded in
  int64_t kv_pool_bytes = 0;  // the page pool, one allocation (0 on CUDA when sized from free memory)
  std::string weight_dtype;   // "float32", "float16" or "bfloat16"
  int64_t total() const { return weight_bytes + kv_pool_bytes; }
};

// Reads config.json in options.model_dir. Errors: the config's own (missing, not JSON, bad
// fields), or OUT_OF_RANGE when the parameter count overflows 64 bits.
absl::StatusOr<ServingMemoryEstimate> EstimateServingMemory(const EngineOptions& options);

// Memory this process may still take: /proc/meminfo's MemAvailable, lowered to the cgroup
// limit minus current usage when the process runs in a memory-limited cgroup (v2 or v1).
// nullopt when neither can be read.
std::optional<int64_t> AvailableHostMemoryBytes();

// OK when the estimate fits the budget: max_memory_bytes when > 0, bounded on CPU by the
// available host memory. RESOURCE_EXHAUSTED with the numbers otherwise. A config.json that
// cannot be read passes (the engine reports it); OUT_OF_RANGE for sizes beyond 2^62 bytes.
absl::Status CheckMemoryBudget(const EngineOptions& options, int64_t max_memory_bytes);

}  // namespace squat::server
