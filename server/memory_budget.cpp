#include "server/memory_budget.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "runtime/model_config.h"

namespace squat::server {
namespace {

using Wide = unsigned __int128;
constexpr int64_t kDefaultKvPoolBytes = int64_t{1} << 30;  // the engine's CPU default for 0

// Parameters the Llama loader allocates for this config (embedding, per-layer attention,
// MLP and norms, final norm, lm_head unless tied). Wide arithmetic: a corrupt config can
// name sizes whose product overflows 64 bits.
Wide ParameterCount(const ModelConfig& c) {
  const Wide hidden = static_cast<uint64_t>(c.hidden_size);
  const Wide vocab = static_cast<uint64_t>(c.vocab_size);
  const Wide inter = static_cast<uint64_t>(c.intermediate_size);
  const Wide q_rows = static_cast<Wide>(static_cast<uint64_t>(c.num_attention_heads)) *
                      static_cast<uint64_t>(c.head_dim);
  const Wide kv_rows = static_cast<Wide>(static_cast<uint64_t>(c.num_key_value_heads)) *
                       static_cast<uint64_t>(c.head_dim);
  Wide per_layer = 2 * hidden                        // input and post-attention norms
                   + (q_rows + 2 * kv_rows) * hidden  // q, k, v
                   + hidden * q_rows                  // o
                   + 3 * inter * hidden;              // gate, up, down
  if (c.attention_bias) per_layer += q_rows + 2 * kv_rows;
  Wide total = vocab * hidden + hidden + per_layer * static_cast<uint64_t>(c.num_hidden_layers);
  if (!c.tie_word_embeddings) total += vocab * hidden;
  return total;
}

// The loader's rule: "auto" keeps half precision on CUDA and computes in float32 on CPU.
std::string LoadedDtype(const EngineOptions& options, const ModelConfig& config) {
  if (options.dtype != "auto") return options.dtype;
  const bool cuda = options.device.rfind("cuda", 0) == 0;
  const bool half = config.torch_dtype == "float16" || config.torch_dtype == "bfloat16";
  return cuda && half ? config.torch_dtype : "float32";
}

int64_t ElementBytes(const std::string& dtype) {
  return dtype == "float16" || dtype == "bfloat16" ? 2 : 4;
}

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

absl::StatusOr<ServingMemoryEstimate> EstimateServingMemory(const EngineOptions& options) {
  const std::string config_path = (std::filesystem::path(options.model_dir) / "config.json").string();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(config_path);
  if (!config.ok()) return config.status();
  ServingMemoryEstimate estimate;
  estimate.weight_dtype = LoadedDtype(options, *config);
  const Wide bytes = ParameterCount(*config) * static_cast<uint64_t>(ElementBytes(estimate.weight_dtype));
  if (bytes > static_cast<Wide>(std::numeric_limits<int64_t>::max() / 2)) {
    return absl::OutOfRangeError(absl::StrCat(
        config_path, ": the model's sizes give more than 2^62 bytes of weights; config.json is corrupt"));
  }
  estimate.weight_bytes = static_cast<int64_t>(bytes);
  // With --kv-pool-mib 0 the CPU pool is 1 GiB; on CUDA the engine sizes it from the memory
  // left after the weights (--gpu-memory-utilization), so only the weights are checked there.
  if (options.kv_pool_bytes > 0) {
    estimate.kv_pool_bytes = options.kv_pool_bytes;
  } else {
    estimate.kv_pool_bytes = options.device == "cpu" ? kDefaultKvPoolBytes : 0;
  }
  return estimate;
}

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
      ") + KV pool ", MiB(estimate->kv_pool_bytes), " = ", MiB(estimate->total()), " exceed the ",
      budget_source, " of ", MiB(*budget), "; lower --kv-pool-mib or serve a smaller model or --dtype",
      budget == max_memory_bytes ? ", or raise --max-memory-mib" : ""));
}

}  // namespace squat::server
