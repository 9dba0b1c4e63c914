#include "runtime/engine/options.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace squat {

absl::Status ValidateEngineOptions(const EngineOptions& o) {
  // "name (--flag-name)": the option for library users, the flag for the server's.
  auto bad = [](const char* name, auto&&... rule) {
    std::string flag = absl::StrCat("--", name);
    std::replace(flag.begin(), flag.end(), '_', '-');
    return absl::InvalidArgumentError(absl::StrCat(name, " (", flag, ") ", rule...));
  };
  if (o.model_dir.empty()) return bad("model", "is empty");
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"max_num_seqs", o.max_num_seqs},
                                    {"max_num_batched_tokens", o.max_num_batched_tokens},
                                    {"max_prefill_chunk", o.max_prefill_chunk},
                                    {"max_waiting", o.max_waiting},
                                    {"max_tokens_limit", o.max_tokens_limit}}) {
    if (value <= 0) return bad(name, "must be > 0, got ", value);
  }
  if (o.default_max_tokens <= 0 || o.default_max_tokens > o.max_tokens_limit) {
    return bad("default_max_tokens", "must be in [1, max_tokens_limit = ", o.max_tokens_limit, "], got ",
               o.default_max_tokens);
  }
  if (o.max_model_len < 0) return bad("max_model_len", "must be >= 0 (0: the model's limit), got ", o.max_model_len);
  if (o.max_prompt_tokens < 0) {
    return bad("max_prompt_tokens", "must be >= 0 (0: max_model_len - 1), got ", o.max_prompt_tokens);
  }
  if (o.kv_pool_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_pool_bytes (--kv-pool-mib) must be >= 0 (0: sized by the engine), got ", o.kv_pool_bytes));
  }
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1)) {
    return bad("gpu_memory_utilization", "must be in (0, 1], got ", o.gpu_memory_utilization);
  }
  return absl::OkStatus();
}

int64_t MaxModelLen(const EngineOptions& options, const ModelConfig& config) {
  return options.max_model_len > 0 ? std::min<int64_t>(options.max_model_len, config.max_position_embeddings)
                                   : config.max_position_embeddings;
}

int64_t MaxPromptTokens(const EngineOptions& options, int64_t max_model_len) {
  return options.max_prompt_tokens > 0 ? std::min<int64_t>(options.max_prompt_tokens, max_model_len - 1)
                                       : max_model_len - 1;
}

kv::FormatDefaults FormatDefaultsOf(const EngineOptions& options) {
  kv::FormatDefaults d;
  d.method = options.kv_format;
  d.k_bits = options.kv_k_bits;
  d.v_bits = options.kv_v_bits;
  d.group_size = options.kv_group_size;
  d.residual_length = options.kv_residual_length;
  d.block_size = options.kv_block_size;
  d.subspace_dim = options.kv_subspace_dim;
  d.lambda = options.kv_lambda;
  d.shared_subspace = options.kv_shared_subspace;
  return d;
}

}  // namespace squat
