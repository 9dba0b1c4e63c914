// End to end on a GPU: greedy generation of several sequences through LlamaModel::ForwardBatch
// on CUDA (the fused batched decode kernels, kvcache/batched_decode.h) against a reference run:
// the CPU path in float32 for every KV method, and, in float16, the same model on CUDA with the
// batched path turned off (per-sequence attention over dequantized pages). The reference picks
// each greedy token, the batched run is fed the same tokens, and at every step its logits must
// agree with the reference's and give the same argmax wherever the reference's top two logits
// are not nearly tied. Sequences join at different steps, so some steps mix a prompt with
// batched decodes, and generation crosses several key flushes (R = 32). Skipped without CUDA.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcache/batched_decode.h"
#include "kvcache/kv_cache.h"
#include "tests/model_test_support.h"

namespace squat {
namespace {

struct CacheSet {
  std::unique_ptr<kv::KvCacheManager> manager;
  std::vector<std::unique_ptr<kv::SequenceKvCache>> caches;
};

kv::KvFormat FormatOf(kv::KvMethod method, int bits, int64_t head_dim) {
  kv::KvFormat f;
  f.method = method;
  f.k_bits = f.v_bits = method == kv::KvMethod::kFp16 ? 16 : bits;
  f.group_size = 32;
  f.residual_length = 32;
  f.block_size = head_dim / 2;
  f.subspace_dim = 16;
  f.lambda = 0.05;  // strong enough that the compensation changes codes
  return f;
}

class GpuDecodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!at::hasCUDA()) return;
    tmp_ = new TempDir();
    dir_ = new std::string(Generate(*tmp_, "gqa", "--preset tiny --seed 23 --num-heads 8 --num-kv-heads 2 "
                                                  "--hidden-size 512 --head-dim 64 --num-layers 2"));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete tmp_;
  }
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
    seed_ = std::random_device{}();
  }

  // Prompts join at steps 0, 0 and 5; each then generates kSteps tokens.
  // Reference: the CPU (float32) or, when gpu_dtype is not float32, the unbatched CUDA path.
  void Compare(kv::KvMethod method, int bits, const std::string& gpu_dtype, double logit_tolerance) {
    const bool against_cpu = gpu_dtype == "float32";
    SCOPED_TRACE(std::string(kv::KvMethodName(method)) + " K" + std::to_string(bits) + " on cuda " + gpu_dtype +
                 (against_cpu ? " vs cpu" : " vs unbatched cuda") + ", seed " + std::to_string(seed_));
    ModelLoadOptions options;
    options.device = "cuda";
    options.dtype = gpu_dtype;
    auto cpu = against_cpu ? LoadFrom(*dir_) : LoadFrom(*dir_, options);
    auto gpu = LoadFrom(*dir_, options);
    ASSERT_TRUE(cpu.ok() && gpu.ok());
    if (!against_cpu) cpu->model->set_batched_decode(false);
    LlamaModel& cpu_model = *cpu->model;
    LlamaModel& gpu_model = *gpu->model;
    const int64_t d = cpu_model.config().head_dim, vocab = cpu_model.config().vocab_size;
    const kv::KvFormat format = FormatOf(method, bits, d);
    const std::vector<int64_t> prompt_lengths = {40, 7, 70}, join_step = {0, 0, 5};
    constexpr int64_t kSteps = 45;
    auto make = [&](LlamaModel& model) {
      CacheSet run;
      auto manager = kv::KvCacheManager::Create(model.kv_shape(), format, int64_t{64} << 20);
      EXPECT_TRUE(manager.ok()) << manager.status();
      run.manager = std::move(*manager);
      for (int64_t length : prompt_lengths) {
        auto cache = run.manager->NewSequence(format, length + kSteps + 1);
        EXPECT_TRUE(cache.ok()) << cache.status();
        run.caches.push_back(std::move(*cache));
      }
      return run;
    };
    CacheSet on_cpu = make(cpu_model), on_gpu = make(gpu_model);
    std::mt19937 rng(seed_);
    std::vector<std::vector<int64_t>> pending(prompt_lengths.size());  // tokens to feed next
    for (size_t s = 0; s < prompt_lengths.size(); ++s) {
      for (int64_t i = 0; i < prompt_lengths[s]; ++i) pending[s].push_back(static_cast<int64_t>(rng() % vocab));
    }
    std::vector<int64_t> generated(prompt_lengths.size(), 0);
    int checked = 0, agreed = 0, batched_steps = 0, rows_beyond = 0;
    double worst = 0;
    std::vector<double> relative;  // per compared row
    for (int64_t step = 0;; ++step) {
      std::vector<int64_t> rows;
      std::vector<ForwardSegment> cpu_segments, gpu_segments;
      std::vector<size_t> members;
      for (size_t s = 0; s < prompt_lengths.size(); ++s) {
        if (step < join_step[s] || generated[s] >= kSteps) continue;
        rows.insert(rows.end(), pending[s].begin(), pending[s].end());
        const int64_t n = static_cast<int64_t>(pending[s].size());
        cpu_segments.push_back({on_cpu.caches[s].get(), n, true});
        gpu_segments.push_back({on_gpu.caches[s].get(), n, true});
        members.push_back(s);
        if (n == 1 && kv::DecodeBatch::Supports(*on_gpu.caches[s])) ++batched_steps;
      }
      if (members.empty()) break;
      const at::Tensor tokens = at::tensor(rows, at::TensorOptions().dtype(at::kLong));
      const at::Tensor cpu_logits = cpu_model.ForwardBatch(tokens, cpu_segments).to(at::kCPU);
      const at::Tensor gpu_logits = gpu_model.ForwardBatch(tokens, gpu_segments).to(at::kCPU);
      for (size_t m = 0; m < members.size(); ++m) {
        const size_t s = members[m];
        const at::Tensor expected = cpu_logits[m], got = gpu_logits[m];
        const double diff = (got - expected).abs().max().item<double>();
        const double range = expected.abs().max().item<double>();
        worst = std::max(worst, diff / range);
        relative.push_back(diff / range);
        if (diff > logit_tolerance * range) ++rows_beyond;
        const auto top = expected.topk(2);
        const int64_t greedy = std::get<1>(top)[0].item<int64_t>();
        const double margin = (std::get<0>(top)[0] - std::get<0>(top)[1]).item<double>();
        if (margin > 2 * logit_tolerance * range) {
          ++checked;
          if (got.argmax().item<int64_t>() == greedy) ++agreed;
        }
        pending[s] = {greedy};
        ++generated[s];
      }
    }
    EXPECT_GT(batched_steps, 100) << "the batched CUDA decode path was not used";
    EXPECT_GT(checked, against_cpu ? 100 : 10);
    // Quantized formats: a code that rounds the other way (the two runs' keys differ in the
    // last bits and one sits on a rounding tie) moves a key by a whole quantization step, and
    // that difference stays in the sequence's cache for every later step. Measured on an H100:
    // in float32 one such flip in about one run of two, in fp16/bf16 (attention outputs of the
    // fused float32 kernel and of the half-precision unbatched path differ by ~1e-3, so the
    // next layer's keys differ) several. So for them the median row is bounded and most greedy
    // tokens must agree; the full-precision format must agree on every row and token.
    const bool exact = method == kv::KvMethod::kFp16;
    std::sort(relative.begin(), relative.end());
    const double median = relative[relative.size() / 2];
    EXPECT_LT(median, logit_tolerance) << "max relative logit error " << worst;
    if (exact) {
      EXPECT_EQ(rows_beyond, 0) << "max relative logit error " << worst;
    }
    const int allowed = exact ? 0 : against_cpu ? checked / 10 : checked / 5;
    EXPECT_GE(agreed, checked - allowed) << agreed << " of " << checked << " greedy tokens agree";
    std::cout << kv::KvMethodName(method) << " K" << bits << " cuda " << gpu_dtype
              << (against_cpu ? " vs cpu" : " vs unbatched cuda") << ": median |dlogit|/max|logit| " << median
              << ", max "
              << worst << ", " << checked << " greedy tokens checked, " << batched_steps << " batched decodes\n";
  }

  static TempDir* tmp_;
  static std::string* dir_;
  uint32_t seed_ = 0;
};
TempDir* GpuDecodeTest::tmp_ = nullptr;
std::string* GpuDecodeTest::dir_ = nullptr;

TEST_F(GpuDecodeTest, Fp16FormatGreedyMatchesCpu) {
  Compare(kv::KvMethod::kFp16, 16, "float32", 1e-4);
  Compare(kv::KvMethod::kFp16, 16, "float16", 2e-2);
}
TEST_F(GpuDecodeTest, KiviGreedyMatchesCpu) {
  Compare(kv::KvMethod::kKivi, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kKivi, 4, "float32", 1e-3);
  Compare(kv::KvMethod::kKivi, 2, "float16", 3e-2);
}
TEST_F(GpuDecodeTest, SquatPreGreedyMatchesCpu) {
  Compare(kv::KvMethod::kSquatPre, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kSquatPre, 4, "float16", 3e-2);
}
TEST_F(GpuDecodeTest, SquatPostGreedyMatchesCpu) {
  Compare(kv::KvMethod::kSquatPost, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kSquatPost, 4, "bfloat16", 5e-2);
}

// Not a check: prints the decode-step time of 64 sequences (prompt 160) on a small fp16 model
// with head_dim 128 (4 layers, 8 heads), fused batched kernels vs the per-sequence path.
TEST_F(GpuDecodeTest, DecodeStepTiming) {
  TempDir tmp;
  const std::string dir = Generate(tmp, "timing", "--preset tiny --seed 3 --num-heads 8 --num-kv-heads 8 "
                                                  "--hidden-size 1024 --head-dim 128 --num-layers 4 --dtype float16");
  for (kv::KvMethod method : {kv::KvMethod::kFp16, kv::KvMethod::kKivi, kv::KvMethod::kSquatPre}) {
    for (bool batched : {false, true}) {
      ModelLoadOptions options;
      options.device = "cuda";
      auto loaded = LoadFrom(dir, options);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      LlamaModel& model = *loaded->model;
      model.set_batched_decode(batched);
      const kv::KvFormat format = FormatOf(method, 2, 128);
      auto manager = kv::KvCacheManager::Create(model.kv_shape(), format, int64_t{2} << 30);
      ASSERT_TRUE(manager.ok()) << manager.status();
      constexpr int kSeqs = 64, kPrompt = 160, kSteps = 48;
      std::vector<std::unique_ptr<kv::SequenceKvCache>> caches;
      std::vector<ForwardSegment> prompt_segments, decode_segments;
      for (int s = 0; s < kSeqs; ++s) {
        auto cache = (*manager)->NewSequence(format, kPrompt + kSteps + 1);
        ASSERT_TRUE(cache.ok()) << cache.status();
        caches.push_back(std::move(*cache));
        prompt_segments.push_back({caches.back().get(), kPrompt, true});
        decode_segments.push_back({caches.back().get(), 1, true});
      }
      const int64_t vocab = model.config().vocab_size;
      model.ForwardBatch(at::randint(vocab, {kSeqs * kPrompt}, at::kLong), prompt_segments);
      at::Tensor next = at::randint(vocab, {kSeqs}, at::kLong);
      model.ForwardBatch(next, decode_segments).to(at::kCPU);  // warm-up
      const auto start = std::chrono::steady_clock::now();
      for (int step = 1; step < kSteps; ++step) {
        next = model.ForwardBatch(next, decode_segments).argmax(-1).to(at::kCPU);
      }
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / (kSteps - 1);
      std::cout << kv::KvMethodName(method) << (batched ? " batched kernels" : " per-sequence path") << ": " << ms
                << " ms per decode step (" << kSeqs << " sequences, 4 layers, 8 heads, d 128, fp16)\n";
    }
  }
}

}  // namespace
}  // namespace squat
