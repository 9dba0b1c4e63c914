#include "runtime/checkpoint/model_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace squat {
namespace {

using nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field '", field, "' ", problem));
}

// A present-but-null field counts as absent: HF writes e.g. "head_dim": null.
const json* FindField(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status ReadInt(const json& object, const char* name, int64_t* out) {
  const json* value = FindField(object, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number_integer()) return FieldError(name, "must be an integer");
  *out = value->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadDouble(const json& object, const char* name, double* out) {
  const json* value = FindField(object, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number()) return FieldError(name, "must be a number");
  *out = value->get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const json& object, const char* name, bool* out) {
  const json* value = FindField(object, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) return FieldError(name, "must be a boolean");
  *out = value->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& object, const char* name, std::string* out) {
  const json* value = FindField(object, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_string()) return FieldError(name, "must be a string");
  *out = value->get<std::string>();
  return absl::OkStatus();
}

absl::StatusOr<int32_t> TokenId(const json& value, absl::string_view field) {
  if (!value.is_number_integer()) return FieldError(field, "must be an integer token id");
  int64_t id = value.get<int64_t>();
  if (id < 0 || id > INT32_MAX) return FieldError(field, absl::StrCat("has invalid token id ", id));
  return static_cast<int32_t>(id);
}

absl::Status ReadRopeScaling(const json& object, ModelConfig* config) {
  const json* value = FindField(object, "rope_scaling");
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_object()) return FieldError("rope_scaling", "must be an object or null");
  RopeScaling scaling;
  // transformers renamed "type" to "rope_type"; older checkpoints still carry "type".
  if (auto status = ReadString(*value, "rope_type", &scaling.rope_type); !status.ok()) return status;
  if (scaling.rope_type.empty()) {
    if (auto status = ReadString(*value, "type", &scaling.rope_type); !status.ok()) return status;
  }
  if (scaling.rope_type.empty()) return FieldError("rope_scaling.rope_type", "is missing");
  if (auto s = ReadDouble(*value, "factor", &scaling.factor); !s.ok()) return s;
  if (auto s = ReadDouble(*value, "low_freq_factor", &scaling.low_freq_factor); !s.ok()) return s;
  if (auto s = ReadDouble(*value, "high_freq_factor", &scaling.high_freq_factor); !s.ok()) return s;
  if (auto s = ReadInt(*value, "original_max_position_embeddings", &scaling.original_max_position_embeddings);
      !s.ok()) {
    return s;
  }
  config->rope_scaling = scaling;
  return absl::OkStatus();
}

absl::Status ReadTokenIds(const json& object, ModelConfig* config) {
  if (const json* bos = FindField(object, "bos_token_id")) {
    auto id = TokenId(*bos, "bos_token_id");
    if (!id.ok()) return id.status();
    config->bos_token_id = *id;
  }
  if (const json* eos = FindField(object, "eos_token_id")) {
    if (eos->is_array()) {
      for (const json& item : *eos) {
        auto id = TokenId(item, "eos_token_id");
        if (!id.ok()) return id.status();
        config->eos_token_ids.push_back(*id);
      }
    } else {
      auto id = TokenId(*eos, "eos_token_id");
      if (!id.ok()) return id.status();
      config->eos_token_ids.push_back(*id);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelConfig(const ModelConfig& c) {
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"max_position_embeddings", c.max_position_embeddings},
  };
  for (const auto& [name, value] : positive) {
    if (value <= 0) return FieldError(name, absl::StrCat("must be positive (got ", value, ")"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat("(", c.num_key_value_heads, ") must divide num_attention_heads (",
                                   c.num_attention_heads, ")"));
  }
  if (c.head_dim <= 0) return FieldError("head_dim", absl::StrCat("must be positive (got ", c.head_dim, ")"));
  if (c.head_dim % 2 != 0) {
    return FieldError("head_dim", absl::StrCat("must be even for rotary embeddings (got ", c.head_dim, ")"));
  }
  if (c.rope_scaling) {
    const RopeScaling& scaling = *c.rope_scaling;
    // "dynamic" (NTK) equals unscaled RoPE up to max_position_embeddings; it is not applied.
    if (scaling.rope_type != "llama3" && scaling.rope_type != "linear" && scaling.rope_type != "dynamic" &&
        scaling.rope_type != "default") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: rope_scaling type '", scaling.rope_type, "' is not supported"));
    }
    if (!(scaling.factor > 0)) return FieldError("rope_scaling.factor", "must be positive");
    if (scaling.rope_type == "llama3") {
      if (!(scaling.low_freq_factor > 0) || !(scaling.high_freq_factor > scaling.low_freq_factor)) {
        return FieldError("rope_scaling.high_freq_factor", "must exceed low_freq_factor, both positive");
      }
      if (scaling.original_max_position_embeddings <= 0) {
        return FieldError("rope_scaling.original_max_position_embeddings", "must be positive");
      }
    }
  }
  if (!(c.rms_norm_eps > 0)) return FieldError("rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 0)) return FieldError("rope_theta", "must be positive");
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16") {
    return FieldError("torch_dtype",
                      absl::StrCat("must be float32, float16 or bfloat16 (got '", c.torch_dtype, "')"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  json root = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");

  ModelConfig config;
  if (auto s = ReadString(root, "model_type", &config.model_type); !s.ok()) return s;
  if (config.model_type != "llama" && config.model_type != "mistral" && config.model_type != "qwen2") {
    return FieldError("model_type",
                      absl::StrCat("'", config.model_type, "' is not supported (llama, mistral, qwen2)"));
  }

  const std::pair<const char*, int64_t*> required_ints[] = {
      {"vocab_size", &config.vocab_size},
      {"hidden_size", &config.hidden_size},
      {"intermediate_size", &config.intermediate_size},
      {"num_hidden_layers", &config.num_hidden_layers},
      {"num_attention_heads", &config.num_attention_heads},
  };
  for (const auto& [name, out] : required_ints) {
    if (FindField(root, name) == nullptr) return FieldError(name, "is missing");
    if (auto s = ReadInt(root, name, out); !s.ok()) return s;
  }
  if (auto s = ReadInt(root, "max_position_embeddings", &config.max_position_embeddings); !s.ok()) {
    return s;
  }
  config.num_key_value_heads = config.num_attention_heads;
  if (auto s = ReadInt(root, "num_key_value_heads", &config.num_key_value_heads); !s.ok()) return s;
  const bool head_dim_given = FindField(root, "head_dim") != nullptr;
  if (head_dim_given) {
    if (auto s = ReadInt(root, "head_dim", &config.head_dim); !s.ok()) return s;
  } else if (config.num_attention_heads > 0) {
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }

  if (auto s = ReadDouble(root, "rms_norm_eps", &config.rms_norm_eps); !s.ok()) return s;
  if (auto s = ReadDouble(root, "rope_theta", &config.rope_theta); !s.ok()) return s;
  if (auto s = ReadRopeScaling(root, &config); !s.ok()) return s;
  if (auto s = ReadBool(root, "tie_word_embeddings", &config.tie_word_embeddings); !s.ok()) return s;
  if (auto s = ReadBool(root, "attention_bias", &config.attention_bias); !s.ok()) return s;
  // Qwen2 always has q/k/v biases; its config.json has no attention_bias field.
  if (config.model_type == "qwen2") config.attention_bias = true;

  // Newer transformers write "dtype"; older ones "torch_dtype".
  if (auto s = ReadString(root, "torch_dtype", &config.torch_dtype); !s.ok()) return s;
  if (FindField(root, "torch_dtype") == nullptr) {
    if (auto s = ReadString(root, "dtype", &config.torch_dtype); !s.ok()) return s;
  }
  if (auto s = ReadTokenIds(root, &config); !s.ok()) return s;

  // Without an explicit head_dim, HF derives it from hidden_size, which must then split evenly.
  if (!head_dim_given && config.num_attention_heads > 0 && config.hidden_size % config.num_attention_heads != 0) {
    return FieldError("hidden_size",
                      absl::StrCat("(", config.hidden_size, ") must be divisible by num_attention_heads (",
                                   config.num_attention_heads, ")"));
  }
  if (auto s = ValidateModelConfig(config); !s.ok()) return s;
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  auto config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::vector<int32_t> LoadEosTokenIds(const std::string& model_dir, const ModelConfig& config) {
  std::vector<int32_t> ids = config.eos_token_ids;
  std::ifstream in(std::filesystem::path(model_dir) / "generation_config.json");
  if (!in) return ids;
  // generation_config.json's eos_token_id is an int or a list, like config.json's.
  const json root = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object() || !root.contains("eos_token_id")) return ids;
  const json& eos = root["eos_token_id"];
  std::vector<int32_t> extra;
  if (eos.is_number_integer()) extra.push_back(eos.get<int32_t>());
  if (eos.is_array()) {
    for (const json& id : eos) {
      if (id.is_number_integer()) extra.push_back(id.get<int32_t>());
    }
  }
  for (int32_t id : extra) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

}  // namespace squat
