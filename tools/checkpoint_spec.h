// What the checkpoint generator writes: model shape (presets + overrides), the HF tensor list
// and config.json / generation_config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint/safetensors.h"

namespace squat::checkpoint {

struct CheckpointSpec {
  std::string model_type = "llama";  // llama, mistral or qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // 0: hidden_size / num_heads
  int64_t max_position_embeddings = 2048;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool rope_scaling_llama3 = false;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::string dtype = "float32";  // float32, float16, bfloat16
  int64_t shards = 1;
  uint64_t seed = 0;
  double init_std = 0.02;

  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_heads; }
};

// Preset names: tiny, tiny-qwen2, llama2-7b, llama3-8b, llama31-8b.
absl::StatusOr<CheckpointSpec> PresetSpec(const std::string& name);
std::vector<std::string> PresetNames();

absl::StatusOr<DType> SpecDType(const CheckpointSpec& spec);

enum class TensorInit {
  kNormal,        // N(0, init_std^2): projections, embeddings, biases
  kOnePlusNoise,  // 1 + N(0, init_std^2): RMSNorm weights, distinguishable from all-ones
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorInit init = TensorInit::kNormal;
  std::string group;  // progress unit: "embeddings", "layer 3", "head"
  int64_t numel() const;
};

// HF LlamaForCausalLM / Qwen2ForCausalLM weight names in model order.
std::vector<TensorSpec> ListTensors(const CheckpointSpec& spec);

// config.json text; validated by parsing it back with runtime/model_config.
absl::StatusOr<std::string> ConfigJson(const CheckpointSpec& spec, int32_t bos_id, int32_t eos_id);
std::string GenerationConfigJson(int32_t bos_id, int32_t eos_id);

}  // namespace squat::checkpoint
