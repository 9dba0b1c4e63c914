// Model hyper-parameters read from a Hugging Face config.json (Llama family, Qwen2).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace squat {

struct RopeScaling {
  std::string rope_type;  // "llama3", "linear", "dynamic" (only llama3 and linear are applied)
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type = "llama";  // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v biases (true for qwen2)
  std::string torch_dtype = "float32";
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;  // config.json's eos_token_id (int or list)
};

// The one check of a config's values (sizes positive, heads a multiple of KV heads, head_dim
// even, norms, RoPE, dtype); ParseModelConfig runs it and LlamaModel::Load runs it again on what
// it is given. Errors name the offending field.
absl::Status ValidateModelConfig(const ModelConfig& config);

// Parses and validates config.json text: defaults (num_key_value_heads, head_dim) filled.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// The end-of-sequence ids: config.json's, extended by generation_config.json's when the model
// directory has one (a file that cannot be parsed adds none).
std::vector<int32_t> LoadEosTokenIds(const std::string& model_dir, const ModelConfig& config);

}  // namespace squat
