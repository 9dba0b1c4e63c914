// The engine on a GPU: the KV pool sized from --gpu-memory-utilization (and --kv-pool-mib
// overriding it), the workspace reported in Describe(), and generation through the scheduler and
// the batched CUDA decode path: requests of every KV method finish, pages return to the pool,
// and with float32 weights the fp16 format's greedy tokens equal the CPU engine's. Skipped
// without a CUDA device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcache/device_memory.h"
#include "runtime/engine/engine.h"
#include "tests/engine_test_support.h"
#include "tests/model_test_support.h"

namespace squat {
namespace {

// Greedy continuations of `prompts` (token ids), all submitted at once.
std::vector<std::vector<int32_t>> GenerateAll(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<std::string>& methods, int max_tokens) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r;
    r.prompt_token_ids = prompts[i];
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    r.kv_method = methods[i % methods.size()];
    auto stream = engine.Submit(std::move(r));
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (stream.ok()) streams.push_back(*stream);
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& stream : streams) {
    const testing_support::DrainedStream drained = testing_support::DrainStream(*stream);
    EXPECT_TRUE(drained.last.error_message.empty()) << drained.last.error_message;
    EXPECT_EQ(drained.last.finish_reason, FinishReason::kLength);
    out.push_back(drained.ids);
    EXPECT_EQ(static_cast<int>(out.back().size()), max_tokens);
  }
  return out;
}

std::vector<std::vector<int32_t>> RandomPrompts(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prompts(count);
  for (auto& p : prompts) {
    const int length = 5 + static_cast<int>(rng() % 60);
    for (int i = 0; i < length; ++i) p.push_back(static_cast<int32_t>(3 + rng() % 250));
  }
  return prompts;
}

class GpuEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
  static EngineOptions CudaOptions() {
    EngineOptions options;
    options.model_dir = SQUAT_TINY_MODEL_DIR;
    options.device = "cuda";
    options.dtype = "float32";
    options.max_model_len = 256;
    return options;
  }
};

TEST_F(GpuEngineTest, KvPoolTakesTheUtilizationShare) {
  EngineOptions options = CudaOptions();
  options.gpu_memory_utilization = 0.5;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto memory = kv::QueryDeviceMemory(at::Device(at::kCUDA, 0));
  ASSERT_TRUE(memory.ok()) << memory.status();
  const KvPoolUsage pool = (*engine)->PoolUsage();
  const double pool_bytes = static_cast<double>(pool.page_bytes) * pool.total_pages;
  const ModelDescription d = (*engine)->Describe();
  EXPECT_GT(d.workspace_bytes, 0);
  // Tiny weights: nearly the whole half is the pool, and never more than the half.
  EXPECT_LE(pool_bytes + d.weight_bytes + d.workspace_bytes, 0.5 * memory->total_bytes);
  EXPECT_GT(pool_bytes, 0.4 * memory->total_bytes);
  std::cout << "pool " << pool_bytes / 1048576.0 << " MiB, workspace " << d.workspace_bytes / 1048576.0
            << " MiB, weights " << d.weight_bytes / 1048576.0 << " MiB of " << memory->total_bytes / 1048576.0
            << " MiB\n";
}

TEST_F(GpuEngineTest, KvPoolMibOverridesTheShare) {
  EngineOptions options = CudaOptions();
  options.kv_pool_bytes = int64_t{48} << 20;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const KvPoolUsage pool = (*engine)->PoolUsage();
  EXPECT_EQ(pool.total_pages, (int64_t{48} << 20) / pool.page_bytes);
}

TEST_F(GpuEngineTest, BatchedDecodeThroughTheSchedulerMatchesCpu) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::vector<std::vector<int32_t>> prompts = RandomPrompts(8, seed);
  EngineOptions cuda_options = CudaOptions();
  cuda_options.kv_pool_bytes = int64_t{256} << 20;
  auto cuda = Engine::Create(cuda_options);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  // Every method at once through continuous batching; pages all come back.
  GenerateAll(**cuda, prompts, {"squat", "kivi", "squat-post", "fp16"}, 70);
  EXPECT_EQ((*cuda)->PoolUsage().used_pages, 0);
  // Full-precision KV with float32 weights: the same greedy tokens as the CPU engine, on a model
  // whose logits are spread (the fixture's are nearly uniform, so near-ties could flip).
  TempDir tmp;
  cuda_options.model_dir = Generate(tmp, "spread", "--preset tiny --seed 19");
  cuda = Engine::Create(cuda_options);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EngineOptions cpu_options = cuda_options;
  cpu_options.device = "cpu";
  cpu_options.dtype = "auto";
  auto cpu = Engine::Create(cpu_options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const auto on_gpu = GenerateAll(**cuda, prompts, {"fp16"}, 40);
  const auto on_cpu = GenerateAll(**cpu, prompts, {"fp16"}, 40);
  EXPECT_EQ(on_gpu, on_cpu);
}

}  // namespace
}  // namespace squat
