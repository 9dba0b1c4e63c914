#include "runtime/checkpoint/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "nlohmann/json.hpp"

namespace squat {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The Llama-3.1-8B config.json as published (extra fields the parser must ignore included).
constexpr const char* kLlama31Config = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

json MinimalConfig() {
  return json{{"vocab_size", 1000},
              {"hidden_size", 128},
              {"intermediate_size", 344},
              {"num_hidden_layers", 3},
              {"num_attention_heads", 4}};
}

absl::StatusOr<ModelConfig> Parse(const json& config) { return ParseModelConfig(config.dump()); }

TEST(ModelConfigTest, ParsesLlama31Config) {
  auto config = ParseModelConfig(kLlama31Config);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->vocab_size, 128256);
  EXPECT_EQ(config->hidden_size, 4096);
  EXPECT_EQ(config->intermediate_size, 14336);
  EXPECT_EQ(config->num_hidden_layers, 32);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(config->rope_scaling->factor, 8.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_EQ(config->bos_token_id, 128000);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ModelConfigTest, AppliesDefaults) {
  auto config = Parse(MinimalConfig());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->num_key_value_heads, 4);  // = num_attention_heads
  EXPECT_EQ(config->head_dim, 32);            // = hidden_size / num_attention_heads
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "float32");
  EXPECT_FALSE(config->bos_token_id.has_value());
  EXPECT_TRUE(config->eos_token_ids.empty());
}

TEST(ModelConfigTest, NullFieldsCountAsAbsent) {
  json config = MinimalConfig();
  config["head_dim"] = nullptr;
  config["num_key_value_heads"] = nullptr;
  config["rope_scaling"] = nullptr;
  config["bos_token_id"] = nullptr;
  auto parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->head_dim, 32);
  EXPECT_EQ(parsed->num_key_value_heads, 4);
  EXPECT_FALSE(parsed->rope_scaling.has_value());
  EXPECT_FALSE(parsed->bos_token_id.has_value());
}

TEST(ModelConfigTest, Qwen2ImpliesAttentionBias) {
  json config = MinimalConfig();
  config["model_type"] = "qwen2";
  config["vocab_size"] = 151936;
  config["tie_word_embeddings"] = true;
  config["eos_token_id"] = 151643;
  config["use_sliding_window"] = false;
  config["sliding_window"] = 4096;
  auto parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model_type, "qwen2");
  EXPECT_TRUE(parsed->attention_bias);
  EXPECT_TRUE(parsed->tie_word_embeddings);
  EXPECT_THAT(parsed->eos_token_ids, ElementsAre(151643));
}

TEST(ModelConfigTest, MistralWithExplicitHeadDim) {
  // Mistral-Nemo style: head_dim is not hidden_size / num_attention_heads.
  json config = MinimalConfig();
  config["model_type"] = "mistral";
  config["hidden_size"] = 160;
  config["num_attention_heads"] = 4;
  config["num_key_value_heads"] = 2;
  config["head_dim"] = 32;
  config["sliding_window"] = nullptr;
  auto parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model_type, "mistral");
  EXPECT_EQ(parsed->head_dim, 32);
  EXPECT_EQ(parsed->num_key_value_heads, 2);
  EXPECT_FALSE(parsed->attention_bias);
}

TEST(ModelConfigTest, LegacyRopeScalingTypeKey) {
  json config = MinimalConfig();
  config["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};
  auto parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->rope_scaling.has_value());
  EXPECT_EQ(parsed->rope_scaling->rope_type, "linear");
  EXPECT_DOUBLE_EQ(parsed->rope_scaling->factor, 2.5);
}

// Rope scaling types the model does not implement are refused when the config is read, not
// later at load; the same check guards configs built in code (ValidateModelConfig).
TEST(ModelConfigTest, UnsupportedRopeScalingIsRefusedAtParse) {
  json config = MinimalConfig();
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  auto parsed = Parse(config);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kUnimplemented) << parsed.status();
  EXPECT_NE(std::string(parsed.status().message()).find("yarn"), std::string::npos);
  config["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  auto dynamic = Parse(config);
  ASSERT_TRUE(dynamic.ok()) << dynamic.status();
  ModelConfig built = *dynamic;
  EXPECT_TRUE(ValidateModelConfig(built).ok());
  built.rope_scaling->rope_type = "longrope";
  EXPECT_EQ(ValidateModelConfig(built).code(), absl::StatusCode::kUnimplemented);
  built = *dynamic;
  built.head_dim = 31;
  EXPECT_EQ(ValidateModelConfig(built).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, NewerDtypeKeyIsAccepted) {
  json config = MinimalConfig();
  config["dtype"] = "float16";
  auto parsed = Parse(config);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->torch_dtype, "float16");
}

TEST(ModelConfigTest, RandomValidShapesRoundTrip) {
  std::random_device device;
  const unsigned seed = device();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const char* dtypes[] = {"float32", "float16", "bfloat16"};
  const char* types[] = {"llama", "mistral", "qwen2"};
  for (int trial = 0; trial < 50; ++trial) {
    const int kv_heads = pick(1, 8);
    const int heads = kv_heads * pick(1, 4);
    const int head_dim = 2 * pick(1, 64);
    const int vocab = pick(300, 200000);
    const bool explicit_head_dim = pick(0, 1) == 1;
    const int hidden = explicit_head_dim ? pick(1, 5000) : heads * head_dim;
    const int eos_count = pick(1, 3);
    json eos = json::array();
    for (int i = 0; i < eos_count; ++i) eos.push_back(pick(0, vocab - 1));
    json config = {{"model_type", types[pick(0, 2)]},
                   {"vocab_size", vocab},
                   {"hidden_size", hidden},
                   {"intermediate_size", pick(1, 20000)},
                   {"num_hidden_layers", pick(1, 80)},
                   {"num_attention_heads", heads},
                   {"num_key_value_heads", kv_heads},
                   {"max_position_embeddings", pick(1, 1 << 20)},
                   {"rope_theta", pick(1, 1000000) * 1.5},
                   {"rms_norm_eps", pick(1, 100) * 1e-7},
                   {"tie_word_embeddings", pick(0, 1) == 1},
                   {"attention_bias", pick(0, 1) == 1},
                   {"torch_dtype", dtypes[pick(0, 2)]},
                   {"bos_token_id", pick(0, vocab - 1)},
                   {"eos_token_id", eos_count == 1 ? eos[0] : eos}};
    if (explicit_head_dim) config["head_dim"] = head_dim;
    auto parsed = Parse(config);
    ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << config.dump();
    EXPECT_EQ(parsed->model_type, config["model_type"].get<std::string>());
    EXPECT_EQ(parsed->vocab_size, vocab);
    EXPECT_EQ(parsed->hidden_size, hidden);
    EXPECT_EQ(parsed->intermediate_size, config["intermediate_size"].get<int64_t>());
    EXPECT_EQ(parsed->num_hidden_layers, config["num_hidden_layers"].get<int64_t>());
    EXPECT_EQ(parsed->num_attention_heads, heads);
    EXPECT_EQ(parsed->num_key_value_heads, kv_heads);
    EXPECT_EQ(parsed->head_dim, head_dim);
    EXPECT_EQ(parsed->max_position_embeddings, config["max_position_embeddings"].get<int64_t>());
    EXPECT_DOUBLE_EQ(parsed->rope_theta, config["rope_theta"].get<double>());
    EXPECT_DOUBLE_EQ(parsed->rms_norm_eps, config["rms_norm_eps"].get<double>());
    EXPECT_EQ(parsed->tie_word_embeddings, config["tie_word_embeddings"].get<bool>());
    EXPECT_EQ(parsed->attention_bias,
              config["attention_bias"].get<bool>() || config["model_type"] == "qwen2");
    EXPECT_EQ(parsed->torch_dtype, config["torch_dtype"].get<std::string>());
    EXPECT_EQ(parsed->bos_token_id, config["bos_token_id"].get<int32_t>());
    ASSERT_EQ(parsed->eos_token_ids.size(), static_cast<size_t>(eos_count));
    for (int i = 0; i < eos_count; ++i) EXPECT_EQ(parsed->eos_token_ids[i], eos[i].get<int32_t>());
  }
}

struct BadConfigCase {
  const char* description;
  std::function<void(json&)> mutate;
  const char* field;  // the error message must name it
};

void PrintTo(const BadConfigCase& bad_case, std::ostream* out) { *out << bad_case.description; }

class ModelConfigErrorTest : public testing::TestWithParam<BadConfigCase> {};

TEST_P(ModelConfigErrorTest, RejectsAndNamesTheField) {
  json config = MinimalConfig();
  GetParam().mutate(config);
  auto parsed = Parse(config);
  ASSERT_FALSE(parsed.ok()) << GetParam().description;
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(GetParam().field)) << GetParam().description;
}

INSTANTIATE_TEST_SUITE_P(
    Validation, ModelConfigErrorTest,
    testing::Values(
        BadConfigCase{"missing hidden_size", [](json& c) { c.erase("hidden_size"); }, "hidden_size"},
        BadConfigCase{"missing vocab_size", [](json& c) { c.erase("vocab_size"); }, "vocab_size"},
        BadConfigCase{"zero vocab", [](json& c) { c["vocab_size"] = 0; }, "vocab_size"},
        BadConfigCase{"negative intermediate", [](json& c) { c["intermediate_size"] = -5; },
                      "intermediate_size"},
        BadConfigCase{"zero layers", [](json& c) { c["num_hidden_layers"] = 0; }, "num_hidden_layers"},
        BadConfigCase{"zero heads", [](json& c) { c["num_attention_heads"] = 0; }, "num_attention_heads"},
        BadConfigCase{"zero kv heads", [](json& c) { c["num_key_value_heads"] = 0; }, "num_key_value_heads"},
        BadConfigCase{"kv heads do not divide heads", [](json& c) { c["num_key_value_heads"] = 3; },
                      "num_key_value_heads"},
        BadConfigCase{"odd head_dim", [](json& c) { c["head_dim"] = 31; }, "head_dim"},
        BadConfigCase{"odd derived head_dim", [](json& c) { c["hidden_size"] = 132; }, "head_dim"},
        BadConfigCase{"hidden not divisible by heads", [](json& c) { c["hidden_size"] = 130; },
                      "hidden_size"},
        BadConfigCase{"zero max positions", [](json& c) { c["max_position_embeddings"] = 0; },
                      "max_position_embeddings"},
        BadConfigCase{"string where int", [](json& c) { c["hidden_size"] = "128"; }, "hidden_size"},
        BadConfigCase{"float where int", [](json& c) { c["num_hidden_layers"] = 3.5; }, "num_hidden_layers"},
        BadConfigCase{"unknown model type", [](json& c) { c["model_type"] = "gpt2"; }, "model_type"},
        BadConfigCase{"bool as string", [](json& c) { c["tie_word_embeddings"] = "yes"; },
                      "tie_word_embeddings"},
        BadConfigCase{"unknown dtype", [](json& c) { c["torch_dtype"] = "int8"; }, "torch_dtype"},
        BadConfigCase{"zero eps", [](json& c) { c["rms_norm_eps"] = 0.0; }, "rms_norm_eps"},
        BadConfigCase{"negative theta", [](json& c) { c["rope_theta"] = -1.0; }, "rope_theta"},
        BadConfigCase{"rope_scaling not object", [](json& c) { c["rope_scaling"] = 8; }, "rope_scaling"},
        BadConfigCase{"rope_scaling without type",
                      [](json& c) {
                        c["rope_scaling"] = {{"factor", 2.0}};
                      },
                      "rope_scaling.rope_type"},
        BadConfigCase{"rope_scaling zero factor",
                      [](json& c) {
                        c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 0.0}};
                      },
                      "rope_scaling.factor"},
        BadConfigCase{"llama3 scaling with inverted band",
                      [](json& c) {
                        c["rope_scaling"] = {{"rope_type", "llama3"},
                                             {"factor", 8.0},
                                             {"low_freq_factor", 4.0},
                                             {"high_freq_factor", 1.0}};
                      },
                      "rope_scaling.high_freq_factor"},
        BadConfigCase{"eos list with a string",
                      [](json& c) {
                        c["eos_token_id"] = {1, "2"};
                      },
                      "eos_token_id"},
        BadConfigCase{"negative eos", [](json& c) { c["eos_token_id"] = -1; }, "eos_token_id"},
        BadConfigCase{"negative bos", [](json& c) { c["bos_token_id"] = -3; }, "bos_token_id"}),
    [](const testing::TestParamInfo<BadConfigCase>& info) {
      std::string name = info.param.description;
      for (char& ch : name) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

TEST(ModelConfigTest, RejectsMalformedJson) {
  EXPECT_FALSE(ParseModelConfig("{\"hidden_size\": 12").ok());
  EXPECT_FALSE(ParseModelConfig("[1, 2, 3]").ok());
  EXPECT_FALSE(ParseModelConfig("").ok());
}

TEST(ModelConfigTest, LoadsFromFileAndReportsMissingFile) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("model_config_test_" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(path);
    out << kLlama31Config;
  }
  auto loaded = LoadModelConfig(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->vocab_size, 128256);

  auto missing = LoadModelConfig(path.string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(path.string()));
}

}  // namespace
}  // namespace squat
