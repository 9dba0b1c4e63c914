#include "server/memory_budget.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace squat::server {
namespace {

std::string MiB(int64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

// "Key:   12345 kB" in /proc/meminfo.
std::optional<int64_t> MemInfoBytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, key + ":")) continue;
    absl::string_view rest = absl::StripAsciiWhitespace(absl::string_view(line).substr(key.size() + 1));
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kib = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kib)) return kib * 1024;
  }
  return std::nullopt;
}

// One integer from a cgroup file; nullopt for "max", absurd values (v1's "no limit") and
// unreadable files.
std::optional<int64_t> CgroupValue(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return std::nullopt;
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value <= 0 || value >= (int64_t{1} << 60)) return std::nullopt;
  return value;
}

std::optional<int64_t> CgroupHeadroomBytes() {
  const std::pair<const char*, const char*> files[] = {
      {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},  // v2
      {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"},
  };
  for (const auto& [limit_path, usage_path] : files) {
    const std::optional<int64_t> limit = CgroupValue(limit_path);
    if (!limit.has_value()) continue;
    const int64_t usage = CgroupValue(usage_path).value_or(0);
    return std::max<int64_t>(0, *limit - usage);
  }
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> AvailableHostMemoryBytes() {
  std::optional<int64_t> available = MemInfoBytes("MemAvailable");
  const std::optional<int64_t> cgroup = CgroupHeadroomBytes();
  if (cgroup.has_value() && (!available.has_value() || *cgroup < *available)) available = cgroup;
  return available;
}

absl::Status CheckMemoryBudget(const EngineOptions& options, int64_t max_memory_bytes) {
  absl::StatusOr<ServingMemoryEstimate> estimate = EstimateServingMemory(options);
  // A missing or malformed config is the engine's to report (it names the directory too);
  // only sizes no machine can hold stop here.
  if (!estimate.ok()) {
    return estimate.status().code() == absl::StatusCode::kOutOfRange ? estimate.status() : absl::OkStatus();
  }
  std::optional<int64_t> budget;
  std::string budget_source;
  if (max_memory_bytes > 0) {
    budget = max_memory_bytes;
    budget_source = "--max-memory-mib budget";
  }
  // On CPU the weights and the pool live in host memory, which bounds any flag. GPU memory
  // is not visible from here (no CUDA in the server); there only the flag applies.
  if (options.device == "cpu") {
    const std::optional<int64_t> available = AvailableHostMemoryBytes();
    if (available.has_value() && (!budget.has_value() || *available < *budget)) {
      budget = available;
      budget_source = "available host memory";
    }
  }
  if (!budget.has_value() || estimate->total() <= *budget) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "model too large for memory: weights ", MiB(estimate->weight_bytes), " (", estimate->weight_dtype,
      ") + KV pool ", MiB(estimate->kv_pool_bytes), " + workspace ", MiB(estimate->workspace_bytes), " = ",
      MiB(estimate->total()), " exceed the ",
      budget_source, " of ", MiB(*budget), "; lower --kv-pool-mib or serve a smaller model or --dtype",
      budget == max_memory_bytes ? ", or raise --max-memory-mib" : ""));
}

}  // namespace squat::server
