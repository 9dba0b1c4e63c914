#include "tools/checkpoint_spec.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint/model_config.h"

namespace squat::checkpoint {
namespace {

using ordered_json = nlohmann::ordered_json;

CheckpointSpec Tiny() {
  CheckpointSpec spec;
  spec.vocab_size = 512;
  spec.hidden_size = 256;
  spec.intermediate_size = 688;
  spec.num_layers = 2;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.max_position_embeddings = 2048;
  spec.rope_theta = 10000.0;
  spec.dtype = "float32";
  return spec;
}

CheckpointSpec Llama3_8b() {
  CheckpointSpec spec;
  spec.vocab_size = 128256;
  spec.hidden_size = 4096;
  spec.intermediate_size = 14336;
  spec.num_layers = 32;
  spec.num_heads = 32;
  spec.num_kv_heads = 8;
  spec.max_position_embeddings = 8192;
  spec.rope_theta = 500000.0;
  spec.dtype = "float16";
  return spec;
}

}  // namespace

std::vector<std::string> PresetNames() {
  return {"tiny", "tiny-qwen2", "llama2-7b", "llama3-8b", "llama31-8b"};
}

absl::StatusOr<CheckpointSpec> PresetSpec(const std::string& name) {
  if (name == "tiny") return Tiny();
  if (name == "tiny-qwen2") {
    CheckpointSpec spec = Tiny();
    spec.model_type = "qwen2";
    spec.attention_bias = true;
    spec.tie_word_embeddings = true;
    spec.rms_norm_eps = 1e-6;  // Qwen2's value
    return spec;
  }
  if (name == "llama2-7b") {
    CheckpointSpec spec;
    spec.vocab_size = 32000;
    spec.hidden_size = 4096;
    spec.intermediate_size = 11008;
    spec.num_layers = 32;
    spec.num_heads = 32;
    spec.num_kv_heads = 32;
    spec.max_position_embeddings = 4096;
    spec.dtype = "float16";
    return spec;
  }
  if (name == "llama3-8b") return Llama3_8b();
  if (name == "llama31-8b") {
    CheckpointSpec spec = Llama3_8b();
    spec.rope_scaling_llama3 = true;
    spec.max_position_embeddings = 131072;
    return spec;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown preset '", name, "' (tiny, tiny-qwen2, llama2-7b, llama3-8b, llama31-8b)"));
}

absl::StatusOr<DType> SpecDType(const CheckpointSpec& spec) {
  if (spec.dtype == "float32") return DType::kF32;
  if (spec.dtype == "float16") return DType::kF16;
  if (spec.dtype == "bfloat16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype must be float32, float16 or bfloat16 (got '", spec.dtype, "')"));
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

std::vector<TensorSpec> ListTensors(const CheckpointSpec& spec) {
  const int64_t hidden = spec.hidden_size;
  const int64_t q_dim = spec.num_heads * spec.resolved_head_dim();
  const int64_t kv_dim = spec.num_kv_heads * spec.resolved_head_dim();
  std::vector<TensorSpec> tensors;
  auto add = [&](std::string name, std::vector<int64_t> shape, TensorInit init, const std::string& group) {
    tensors.push_back(TensorSpec{std::move(name), std::move(shape), init, group});
  };
  add("model.embed_tokens.weight", {spec.vocab_size, hidden}, TensorInit::kNormal, "embeddings");
  for (int64_t layer = 0; layer < spec.num_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    const std::string group = absl::StrCat("layer ", layer);
    add(prefix + "input_layernorm.weight", {hidden}, TensorInit::kOnePlusNoise, group);
    // HF nn.Linear weights are [out_features, in_features].
    add(prefix + "self_attn.q_proj.weight", {q_dim, hidden}, TensorInit::kNormal, group);
    add(prefix + "self_attn.k_proj.weight", {kv_dim, hidden}, TensorInit::kNormal, group);
    add(prefix + "self_attn.v_proj.weight", {kv_dim, hidden}, TensorInit::kNormal, group);
    if (spec.attention_bias) {
      add(prefix + "self_attn.q_proj.bias", {q_dim}, TensorInit::kNormal, group);
      add(prefix + "self_attn.k_proj.bias", {kv_dim}, TensorInit::kNormal, group);
      add(prefix + "self_attn.v_proj.bias", {kv_dim}, TensorInit::kNormal, group);
    }
    add(prefix + "self_attn.o_proj.weight", {hidden, q_dim}, TensorInit::kNormal, group);
    add(prefix + "post_attention_layernorm.weight", {hidden}, TensorInit::kOnePlusNoise, group);
    add(prefix + "mlp.gate_proj.weight", {spec.intermediate_size, hidden}, TensorInit::kNormal, group);
    add(prefix + "mlp.up_proj.weight", {spec.intermediate_size, hidden}, TensorInit::kNormal, group);
    add(prefix + "mlp.down_proj.weight", {hidden, spec.intermediate_size}, TensorInit::kNormal, group);
  }
  add("model.norm.weight", {hidden}, TensorInit::kOnePlusNoise, "head");
  if (!spec.tie_word_embeddings) {
    add("lm_head.weight", {spec.vocab_size, hidden}, TensorInit::kNormal, "head");
  }
  return tensors;
}

absl::StatusOr<std::string> ConfigJson(const CheckpointSpec& spec, int32_t bos_id, int32_t eos_id) {
  if (spec.num_heads <= 0) return absl::InvalidArgumentError("--num-heads must be positive");
  std::string architecture = "LlamaForCausalLM";
  if (spec.model_type == "qwen2") {
    architecture = "Qwen2ForCausalLM";
  } else if (spec.model_type == "mistral") {
    architecture = "MistralForCausalLM";
  } else if (spec.model_type != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat("--model-type must be llama, mistral or qwen2 (got '", spec.model_type, "')"));
  }
  ordered_json config = {
      {"architectures", {architecture}},
      {"model_type", spec.model_type},
      {"vocab_size", spec.vocab_size},
      {"hidden_size", spec.hidden_size},
      {"intermediate_size", spec.intermediate_size},
      {"num_hidden_layers", spec.num_layers},
      {"num_attention_heads", spec.num_heads},
      {"num_key_value_heads", spec.num_kv_heads},
      {"head_dim", spec.resolved_head_dim()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", spec.max_position_embeddings},
      {"rms_norm_eps", spec.rms_norm_eps},
      {"rope_theta", spec.rope_theta},
      {"rope_scaling", nullptr},
      {"attention_bias", spec.attention_bias},
      {"attention_dropout", 0.0},
      {"tie_word_embeddings", spec.tie_word_embeddings},
      {"torch_dtype", spec.dtype},
      {"bos_token_id", bos_id},
      {"eos_token_id", eos_id},
      {"initializer_range", spec.init_std},
      {"use_cache", true},
  };
  if (spec.rope_scaling_llama3) {
    config["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
  }
  if (spec.model_type == "llama") {
    config["mlp_bias"] = false;
    config["pretraining_tp"] = 1;
  } else if (spec.model_type == "qwen2") {
    config["use_sliding_window"] = false;
    config["max_window_layers"] = spec.num_layers;
  } else {
    config["sliding_window"] = nullptr;
  }
  std::string text = config.dump(2);
  // The runtime's own parser is the judge of what a valid shape is.
  auto parsed = ParseModelConfig(text);
  if (!parsed.ok()) return parsed.status();
  if (parsed->attention_bias != spec.attention_bias) {
    return absl::InvalidArgumentError("qwen2 checkpoints always have attention biases (--attention-bias)");
  }
  return text;
}

std::string GenerationConfigJson(int32_t bos_id, int32_t eos_id) {
  ordered_json config = {
      {"_from_model_config", true},
      {"bos_token_id", bos_id},
      {"eos_token_id", eos_id},
  };
  return config.dump(2);
}

}  // namespace squat::checkpoint
