// End to end on a GPU: the model's steps through the CUDA attention backend (kernels/) against a
// reference run: the CPU in float32 for every KV method, and, in float16 / bfloat16, the same
// model on CUDA with the ATen reference backend. The reference picks each greedy token, the
// CUDA run is fed the same tokens, and at every step its logits must agree with the
// reference's and give the same argmax wherever the reference's top two logits are not nearly
// tied. Sequences join at different steps, so steps mix prompts with decode rows, and
// generation crosses several key flushes (R = 32). Also on CUDA: a step mixing every format
// gives each sequence its tokens alone, and the kernels rotate pre-RoPE keys bit for bit as
// the model does (float32). Skipped without CUDA.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcache/attention_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/standalone_cache.h"
#include "tests/model_test_support.h"
#include "tests/step_mix_support.h"

namespace squat {
namespace {

struct DeviceRun {
  std::unique_ptr<kv::KvCacheManager> manager;
  std::unique_ptr<kv::AttentionBackend> reference;  // set: run through the reference backend
  std::vector<std::unique_ptr<kv::SequenceKvCache>> caches;
  std::unique_ptr<StepRunner> runner;
};

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
  void Compare(kv::KvMethod method, int bits, const std::string& gpu_dtype, double logit_tolerance) {
    const bool against_cpu = gpu_dtype == "float32";
    SCOPED_TRACE(std::string(kv::KvMethodName(method)) + " K" + std::to_string(bits) + " on cuda " + gpu_dtype +
                 (against_cpu ? " vs cpu" : " vs the reference backend on cuda") + ", seed " + std::to_string(seed_));
    ModelLoadOptions options;
    options.device = "cuda";
    options.dtype = gpu_dtype;
    auto cpu = against_cpu ? LoadFrom(*dir_) : LoadFrom(*dir_, options);
    auto gpu = LoadFrom(*dir_, options);
    ASSERT_TRUE(cpu.ok() && gpu.ok());
    LlamaModel& ref_model = *cpu->model;
    LlamaModel& gpu_model = *gpu->model;
    const int64_t d = ref_model.config().head_dim, vocab = ref_model.config().vocab_size;
    const kv::KvFormat format = MixFormat(method, bits, bits, d);
    const std::vector<int64_t> prompt_lengths = {40, 7, 70}, join_step = {0, 0, 5};
    constexpr int64_t kSteps = 45;
    auto make = [&](LlamaModel& model, bool reference) {
      DeviceRun run;
      auto manager = kv::KvCacheManager::Create(model.kv_shape(), format, int64_t{64} << 20);
      EXPECT_TRUE(manager.ok()) << manager.status();
      run.manager = std::move(*manager);
      if (reference) run.reference = kv::AttentionBackend::CreateReference(model.kv_shape(), run.manager->shared_pool());
      for (int64_t length : prompt_lengths) {
        auto cache = run.manager->NewSequence(format, length + kSteps + 1);
        EXPECT_TRUE(cache.ok()) << cache.status();
        run.caches.push_back(std::move(*cache));
      }
      auto runner = StepRunner::Create(model, *run.manager, 256, 3, run.reference.get());
      EXPECT_TRUE(runner.ok()) << runner.status();
      run.runner = std::move(*runner);
      return run;
    };
    DeviceRun ref = make(ref_model, /*reference=*/!against_cpu), on_gpu = make(gpu_model, false);
    EXPECT_STREQ(on_gpu.manager->backend().name(), "cuda");
    std::mt19937 rng(seed_);
    std::vector<std::vector<int32_t>> pending(prompt_lengths.size());  // tokens to feed next
    for (size_t s = 0; s < prompt_lengths.size(); ++s) {
      for (int64_t i = 0; i < prompt_lengths[s]; ++i) pending[s].push_back(static_cast<int32_t>(rng() % vocab));
    }
    std::vector<int64_t> generated(prompt_lengths.size(), 0);
    int checked = 0, agreed = 0, decode_rows = 0, rows_beyond = 0;
    double worst = 0;
    std::vector<double> relative;  // per compared row
    for (int64_t step = 0;; ++step) {
      std::vector<StepEntry> ref_entries, gpu_entries;
      std::vector<size_t> members;
      for (size_t s = 0; s < prompt_lengths.size(); ++s) {
        if (step < join_step[s] || generated[s] >= kSteps) continue;
        StepEntry e;
        e.tokens = pending[s].data();
        e.num_tokens = static_cast<int64_t>(pending[s].size());
        e.cache = ref.caches[s].get();
        ref_entries.push_back(e);
        e.cache = on_gpu.caches[s].get();
        gpu_entries.push_back(e);
        members.push_back(s);
        decode_rows += e.num_tokens == 1;
      }
      if (members.empty()) break;
      const at::Tensor ref_logits = ref.runner->Run(ref_entries).to(at::kCPU);
      const at::Tensor gpu_logits = on_gpu.runner->Run(gpu_entries).to(at::kCPU);
      for (size_t m = 0; m < members.size(); ++m) {
        const size_t s = members[m];
        const at::Tensor expected = ref_logits[m], got = gpu_logits[m];
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
        pending[s] = {static_cast<int32_t>(greedy)};
        ++generated[s];
      }
    }
    EXPECT_GT(decode_rows, 100) << "too few decode rows went through the kernels";
    EXPECT_GT(checked, against_cpu ? 100 : 10);
    // Quantized formats: a code that rounds the other way (the two runs' keys differ in the
    // last bits and one sits on a rounding tie) moves a key by a whole quantization step, and
    // that difference stays in the sequence's cache for every later step. So for them the
    // median row is bounded and most greedy tokens must agree; the full-precision format must
    // agree on every row and token.
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
              << (against_cpu ? " vs cpu" : " vs reference backend") << ": median |dlogit|/max|logit| " << median
              << ", max " << worst << ", " << checked << " greedy tokens checked, " << decode_rows << " decode rows\n";
  }

  static TempDir* tmp_;
  static std::string* dir_;
  uint32_t seed_ = 0;
};
TempDir* GpuDecodeTest::tmp_ = nullptr;
std::string* GpuDecodeTest::dir_ = nullptr;

TEST_F(GpuDecodeTest, Fp16FormatGreedyMatchesReference) {
  Compare(kv::KvMethod::kFp16, 16, "float32", 1e-4);
  Compare(kv::KvMethod::kFp16, 16, "float16", 2e-2);
}
TEST_F(GpuDecodeTest, KiviGreedyMatchesReference) {
  Compare(kv::KvMethod::kKivi, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kKivi, 4, "float32", 1e-3);
  Compare(kv::KvMethod::kKivi, 2, "float16", 3e-2);
}
TEST_F(GpuDecodeTest, SquatPreGreedyMatchesReference) {
  Compare(kv::KvMethod::kSquatPre, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kSquatPre, 4, "float16", 3e-2);
}
TEST_F(GpuDecodeTest, SquatPostGreedyMatchesReference) {
  Compare(kv::KvMethod::kSquatPost, 2, "float32", 1e-3);
  Compare(kv::KvMethod::kSquatPost, 4, "bfloat16", 5e-2);
}

// As step_runner_test's CPU cases, through the CUDA kernels: every format, prefill chunks and
// decode rows in the same steps, each sequence's greedy tokens as alone; and the kernels rotate
// a pre-RoPE cache's keys (RotatePair) bit for bit as the model rotates k (float32).
TEST_F(GpuDecodeTest, MixedStepsGiveEachSequenceItsTokensAlone) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (const std::string dtype : {"float32", "float16"}) {
    SCOPED_TRACE(dtype);
    ModelLoadOptions options;
    options.device = "cuda";
    options.dtype = dtype;
    auto loaded = LoadFrom(*dir_, options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    CheckMixedSteps(*loaded->model, seed_);
  }
}

TEST_F(GpuDecodeTest, KernelsRotateLikeTheModelBitForBit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  ModelLoadOptions options;
  options.device = "cuda";
  options.dtype = "float32";
  auto loaded = LoadFrom(*dir_, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  CheckPreRopeRotatesLikeTheModel(*loaded->model, seed_, "cuda");
}

// Not a check: prints the decode-step time of 64 sequences (prompt 160) on a small fp16 model
// with head_dim 128 (4 layers, 8 heads), the CUDA backend vs the ATen reference backend.
TEST_F(GpuDecodeTest, DecodeStepTiming) {
  TempDir tmp;
  const std::string dir = Generate(tmp, "timing", "--preset tiny --seed 3 --num-heads 8 --num-kv-heads 8 "
                                                  "--hidden-size 1024 --head-dim 128 --num-layers 4 --dtype float16");
  for (kv::KvMethod method : {kv::KvMethod::kFp16, kv::KvMethod::kKivi, kv::KvMethod::kSquatPre}) {
    for (bool kernels : {false, true}) {
      ModelLoadOptions options;
      options.device = "cuda";
      auto loaded = LoadFrom(dir, options);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      LlamaModel& model = *loaded->model;
      const kv::KvFormat format = MixFormat(method, 2, 2, 128);
      auto manager = kv::KvCacheManager::Create(model.kv_shape(), format, int64_t{2} << 30);
      ASSERT_TRUE(manager.ok()) << manager.status();
      std::unique_ptr<kv::AttentionBackend> reference;
      if (!kernels) reference = kv::AttentionBackend::CreateReference(model.kv_shape(), (*manager)->shared_pool());
      constexpr int kSeqs = 64, kPrompt = 160, kSteps = 48;
      auto runner = StepRunner::Create(model, **manager, kSeqs * kPrompt, kSeqs, reference.get());
      ASSERT_TRUE(runner.ok()) << runner.status();
      std::vector<std::unique_ptr<kv::SequenceKvCache>> caches;
      std::mt19937 rng(3);
      std::vector<std::vector<int32_t>> prompts(kSeqs), next(kSeqs, std::vector<int32_t>(1, 1));
      std::vector<StepEntry> prefill, decode;
      for (int s = 0; s < kSeqs; ++s) {
        auto cache = (*manager)->NewSequence(format, kPrompt + kSteps + 1);
        ASSERT_TRUE(cache.ok()) << cache.status();
        caches.push_back(std::move(*cache));
        for (int i = 0; i < kPrompt; ++i) prompts[s].push_back(static_cast<int32_t>(rng() % model.config().vocab_size));
        prefill.push_back({caches.back().get(), prompts[s].data(), kPrompt, true, true, false});
        decode.push_back({caches.back().get(), next[s].data(), 1, true, true, false});
      }
      (*runner)->Run(prefill);
      auto step = [&] {
        const at::Tensor ids = (*runner)->Run(decode).argmax(-1).to(at::kCPU);
        for (int s = 0; s < kSeqs; ++s) next[s][0] = static_cast<int32_t>(ids[s].item<int64_t>());
      };
      step();  // warm-up
      const auto start = std::chrono::steady_clock::now();
      for (int i = 1; i < kSteps; ++i) step();
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / (kSteps - 1);
      std::cout << kv::KvMethodName(method) << (kernels ? " CUDA backend" : " reference backend") << ": " << ms
                << " ms per decode step (" << kSeqs << " sequences, 4 layers, 8 heads, d 128, fp16)\n";
    }
  }
}

}  // namespace
}  // namespace squat
