// The start-up memory check: before the engine allocates anything, squat-server asks the
// runtime what serving the model will take (EstimateServingMemory: weights, KV pool, workspace)
// and refuses to start when that exceeds the budget, instead of dying later in an allocation
// (or of the kernel's OOM killer). The budget is the server's: a flag and the host's memory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine/engine.h"

namespace squat::server {

// Memory this process may still take: /proc/meminfo's MemAvailable, lowered to the cgroup
// limit minus current usage when the process runs in a memory-limited cgroup (v2 or v1).
// nullopt when neither can be read.
std::optional<int64_t> AvailableHostMemoryBytes();

// OK when the estimate fits the budget: max_memory_bytes when > 0, bounded on CPU by the
// available host memory. RESOURCE_EXHAUSTED with the numbers otherwise. A model that cannot be
// estimated passes (the engine reports why it cannot load it), except OUT_OF_RANGE: sizes beyond
// 2^62 bytes.
absl::Status CheckMemoryBudget(const EngineOptions& options, int64_t max_memory_bytes);

}  // namespace squat::server
