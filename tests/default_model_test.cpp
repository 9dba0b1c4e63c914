// The shipped default model (models/tiny-english) against HF, recorded when it was trained:
// tools/train_tiny/train.py ran HF tokenizers and transformers' LlamaForCausalLM (float32) on
// the GPU machine and stored their ids in training_report.json. Our tokenizer must give the
// same ids, and our greedy decoding through the fp16 KV cache the same 40 tokens.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/engine/engine.h"
#include "tests/engine_test_support.h"

namespace squat {
namespace {

const std::string kModelDir = std::string(SQUAT_SOURCE_DIR) + "/models/tiny-english";

nlohmann::json LoadReport() {
  std::ifstream in(kModelDir + "/training_report.json");
  EXPECT_TRUE(in.good()) << "cannot read " << kModelDir << "/training_report.json";
  return nlohmann::json::parse(in);
}

std::vector<int32_t> Generate(Engine& engine, const std::vector<int32_t>& prompt_ids,
                              const std::string& kv_method, int32_t max_tokens) {
  GenerateRequest request;
  request.prompt_token_ids = prompt_ids;
  request.kv_method = kv_method;
  request.sampling.temperature = 0;
  request.sampling.max_tokens = max_tokens;
  request.sampling.ignore_eos = true;
  auto stream = engine.Submit(std::move(request));
  EXPECT_TRUE(stream.ok()) << stream.status();
  if (!stream.ok()) return {};
  const testing_support::DrainedStream drained = testing_support::DrainStream(**stream);
  EXPECT_NE(drained.last.finish_reason, FinishReason::kError) << drained.last.error_message;
  return drained.ids;
}

class DefaultModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EngineOptions options;
    options.model_dir = kModelDir;
    options.kv_pool_bytes = 64ll << 20;
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value().release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  static Engine* engine_;
};
Engine* DefaultModelTest::engine_ = nullptr;

TEST_F(DefaultModelTest, TokenizerMatchesHfTokenizers) {
  const nlohmann::json report = LoadReport();
  int cases = 0;
  for (const auto& sample : report["evaluation"]["samples"]) {
    auto ids = engine_->Tokenize(sample["prompt"].get<std::string>(), /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, sample["prompt_ids"].get<std::vector<int32_t>>()) << sample["prompt"];
    ++cases;
  }
  for (const auto& c : report["evaluation"]["tokenizer_cases"]) {
    // Recorded with the BOS token, as the server encodes prompts by default.
    auto ids = engine_->Tokenize(c["text"].get<std::string>(), /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>())
        << c["text"].get<std::string>().substr(0, 60);
    ++cases;
  }
  EXPECT_GE(cases, 10);
}

TEST_F(DefaultModelTest, GreedyWithFp16CacheMatchesTransformers) {
  const nlohmann::json report = LoadReport();
  for (const auto& sample : report["evaluation"]["samples"]) {
    const auto expected = sample["greedy_ids"].get<std::vector<int32_t>>();
    const auto got = Generate(*engine_, sample["prompt_ids"].get<std::vector<int32_t>>(), "fp16",
                              static_cast<int32_t>(expected.size()));
    EXPECT_EQ(got, expected) << "prompt: " << sample["prompt"];
  }
}

}  // namespace
}  // namespace squat
