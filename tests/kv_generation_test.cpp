// Spec T11 on a small model: over a generation, the logits computed with each quantized KV
// format are compared with the full-precision cache's logits for the same token sequence
// (teacher forcing, so every format sees the same tokens). SQuat should err less than KIVI
// at equal bits on average over prompts; squat-post with lambda = 0 is KIVI bit for bit.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kvcache/standalone_cache.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/model/llama_model.h"
#include "tests/model_test_support.h"

namespace squat {
namespace {

constexpr int64_t kPromptTokens = 150;  // several R = 32 key blocks quantized at prefill
constexpr int64_t kGeneratedTokens = 48;

kv::KvFormat Format(kv::KvMethod method, int bits, int64_t head_dim, double lambda) {
  kv::KvFormat f;  // the spec's recommended settings: G = R = 32, r = 60, lambda = 1e-3
  f.method = method;
  f.k_bits = f.v_bits = bits;
  f.block_size = head_dim / 2;  // two channel blocks, as g = 64 for d = 128
  f.lambda = lambda;
  return f;
}

// Queries of trained LLMs concentrate in a few directions per head; random weights give
// near-isotropic queries, for which SQuat's metric is close to a multiple of I and SQuat
// reduces to KIVI. Rewrite each head's query projection as rank 4 plus a small full-rank part.
void MakeQueriesLowRank(const std::string& dir, int64_t heads, int64_t head_dim, uint32_t seed) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::vector<char>> storage;
  std::vector<NamedTensor> tensors;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    at::manual_seed(seed);
    for (const std::string& name : (*file)->Names()) {
      const TensorView* view = (*file)->Find(name);
      ASSERT_EQ(view->dtype, DType::kF32) << name;
      storage.emplace_back(static_cast<const char*>(view->data), static_cast<const char*>(view->data) + view->nbytes);
      if (name.find("self_attn.q_proj.weight") != std::string::npos) {
        at::Tensor w = at::from_blob(storage.back().data(), view->shape, at::kFloat);
        const int64_t hidden = w.size(1);
        at::Tensor per_head = w.view({heads, head_dim, hidden});
        at::Tensor low_rank = at::matmul(at::randn({heads, head_dim, 4}), at::randn({heads, 4, hidden})) * 0.05;
        per_head.copy_(low_rank + 0.2 * per_head);
      }
      tensors.push_back({name, *view});
      tensors.back().view.data = storage.back().data();
    }
  }
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
}

// Logits [steps + 1, vocab] for prompt + forced tokens: the prefill's last row, then one row
// per decoded token.
at::Tensor ForcedLogits(LlamaModel& model, const kv::KvFormat& format, const std::vector<int64_t>& prompt,
                        const std::vector<int64_t>& forced) {
  auto cache = kv::StandaloneCache::Create(model.kv_shape(), format,
                                           static_cast<int64_t>(prompt.size() + forced.size()));
  EXPECT_TRUE(cache.ok()) << cache.status();
  std::vector<at::Tensor> rows = {Forward(model, prompt, *cache)};
  for (size_t i = 0; i + 1 < forced.size(); ++i) rows.push_back(Forward(model, {forced[i]}, *cache));
  return at::cat(rows, 0);
}

class KvGenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    // head_dim 64, 4 query heads per KV head as Llama-3.
    const std::string dir = Generate(*tmp_, "gqa", "--preset tiny --seed 41 --num-heads 8 --num-kv-heads 2 "
                                                   "--hidden-size 512 --head-dim 64 --num-layers 2");
    MakeQueriesLowRank(dir, 8, 64, 41);
    auto loaded = LoadFrom(dir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    loaded_ = new Loaded(std::move(*loaded));
  }
  static void TearDownTestSuite() {
    delete loaded_;
    delete tmp_;
  }
  static LlamaModel& model() { return *loaded_->model; }

  // Prompt and its full-precision greedy continuation.
  static void MakeCase(uint32_t seed, std::vector<int64_t>* prompt, std::vector<int64_t>* generated) {
    *prompt = RandomTokens(model().config().vocab_size, kPromptTokens, seed);
    auto cache = NewCache(model(), kPromptTokens + kGeneratedTokens);
    at::Tensor logits = Forward(model(), *prompt, cache);
    generated->clear();
    for (int64_t i = 0; i < kGeneratedTokens; ++i) {
      generated->push_back(logits.argmax(-1).item<int64_t>());
      if (i + 1 < kGeneratedTokens) logits = Forward(model(), {generated->back()}, cache);
    }
  }

  static TempDir* tmp_;
  static Loaded* loaded_;
};
TempDir* KvGenerationTest::tmp_ = nullptr;
Loaded* KvGenerationTest::loaded_ = nullptr;

TEST_F(KvGenerationTest, SquatLogitErrorBelowKiviAtEqualBits) {
  const int64_t d = model().config().head_dim;
  const uint32_t base_seed = std::random_device{}();
  SCOPED_TRACE("prompt seed " + std::to_string(base_seed));
  constexpr int kPrompts = 6;
  for (int bits : {2, 4}) {
    double kivi_error = 0, squat_error = 0, squat_post_error = 0;
    for (int p = 0; p < kPrompts; ++p) {
      std::vector<int64_t> prompt, generated;
      MakeCase(base_seed + p, &prompt, &generated);
      const at::Tensor reference = ForcedLogits(model(), kv::FullPrecisionFormat(), prompt, generated);
      auto error = [&](kv::KvMethod method) {
        const at::Tensor logits = ForcedLogits(model(), Format(method, bits, d, 1e-3), prompt, generated);
        return (logits - reference).abs().mean().item<double>() / kPrompts;
      };
      kivi_error += error(kv::KvMethod::kKivi);
      squat_error += error(kv::KvMethod::kSquatPre);
      squat_post_error += error(kv::KvMethod::kSquatPost);
    }
    RecordProperty("bits" + std::to_string(bits) + "_kivi", std::to_string(kivi_error));
    RecordProperty("bits" + std::to_string(bits) + "_squat", std::to_string(squat_error));
    RecordProperty("bits" + std::to_string(bits) + "_squat_post", std::to_string(squat_post_error));
    std::printf("K%dV%d mean |logit error| vs fp16: kivi %.5f  squat %.5f  squat-post %.5f\n", bits, bits,
                kivi_error, squat_error, squat_post_error);
    EXPECT_GT(kivi_error, 0.0);  // quantization is visible at all
    // The default method (pre-RoPE keys) is required to win. squat-post's margin over KIVI
    // is smaller on this model (it lost in about 1 run of 10 at 2 bits while writing this
    // test), so it is reported, not asserted.
    EXPECT_LT(squat_error, kivi_error) << bits << " bits";
  }
}

TEST_F(KvGenerationTest, SquatPostWithLambdaZeroIsKivi) {
  const int64_t d = model().config().head_dim;
  std::vector<int64_t> prompt, generated;
  MakeCase(std::random_device{}(), &prompt, &generated);
  for (int bits : {2, 4}) {
    const at::Tensor kivi = ForcedLogits(model(), Format(kv::KvMethod::kKivi, bits, d, 1e-3), prompt, generated);
    const at::Tensor squat = ForcedLogits(model(), Format(kv::KvMethod::kSquatPost, bits, d, 0.0), prompt, generated);
    EXPECT_TRUE(at::equal(kivi, squat)) << bits << " bits";
  }
}

}  // namespace
}  // namespace squat
