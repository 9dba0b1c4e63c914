// EstimateServingMemory (runtime/engine/engine.h) against what the engine then allocates: weights, KV
// pool and workspace must agree exactly, on a checkpoint whose stored dtype differs from the
// dtype its config.json names (the loader goes by the stored one). Also the loader's dtype rule
// and the size checks the estimate shares with it.
#include "runtime/engine/engine.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/model/model_memory.h"
#include "tests/model_test_support.h"

namespace squat {
namespace {

// Rewrites config.json's torch_dtype, leaving the stored tensors as they are.
void SetConfigDtype(const std::string& dir, const std::string& dtype) {
  nlohmann::json config;
  {
    std::ifstream in(dir + "/config.json");
    in >> config;
  }
  config["torch_dtype"] = dtype;
  std::ofstream(dir + "/config.json") << config.dump(2);
}

class MemoryEstimateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    // Stored in float16, but config.json says float32.
    dir_ = new std::string(Generate(*tmp_, "f16", "--preset tiny --seed 11 --dtype float16"));
    SetConfigDtype(*dir_, "float32");
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete tmp_;
  }
  static TempDir* tmp_;
  static std::string* dir_;
};
TempDir* MemoryEstimateTest::tmp_ = nullptr;
std::string* MemoryEstimateTest::dir_ = nullptr;

TEST_F(MemoryEstimateTest, EqualsWhatTheEngineAllocates) {
  std::mt19937 rng(std::random_device{}());
  for (const char* dtype : {"auto", "float16", "bfloat16", "float32"}) {
    SCOPED_TRACE(dtype);
    EngineOptions options;
    options.model_dir = *dir_;
    options.dtype = dtype;
    options.kv_format = rng() % 2 ? "squat" : "fp16";
    // A pool size that is not a whole number of pages: both sides round down the same way.
    options.kv_pool_bytes = (int64_t{1} << 20) * (1 + rng() % 8) + rng() % 100000;
    options.max_num_batched_tokens = 64 + static_cast<int32_t>(rng() % 512);
    options.max_num_seqs = 1 + static_cast<int32_t>(rng() % 64);
    options.max_model_len = 64 + static_cast<int32_t>(rng() % 128);
    absl::StatusOr<ServingMemoryEstimate> estimate = EstimateServingMemory(options);
    ASSERT_TRUE(estimate.ok()) << estimate.status();
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    const ModelDescription d = (*engine)->Describe();
    const KvPoolUsage pool = (*engine)->PoolUsage();
    // "auto" on CPU computes in float32 whatever the checkpoint stores.
    EXPECT_EQ(estimate->weight_dtype, std::string(dtype) == "auto" ? "float32" : dtype);
    EXPECT_EQ(estimate->weight_dtype, d.dtype);
    EXPECT_EQ(estimate->weight_bytes, d.weight_bytes);
    EXPECT_EQ(estimate->kv_pool_bytes, pool.page_bytes * pool.total_pages);
    EXPECT_LE(estimate->kv_pool_bytes, options.kv_pool_bytes);
    EXPECT_GT(estimate->kv_pool_bytes, options.kv_pool_bytes - pool.page_bytes);
    EXPECT_EQ(estimate->workspace_bytes, d.workspace_bytes);
    EXPECT_FALSE(estimate->kv_pool_from_free_memory);
    EXPECT_EQ(estimate->total(), d.weight_bytes + pool.page_bytes * pool.total_pages + d.workspace_bytes);
  }
}

TEST_F(MemoryEstimateTest, DefaultCpuPoolAndErrors) {
  EngineOptions options;
  options.model_dir = *dir_;
  absl::StatusOr<ServingMemoryEstimate> estimate = EstimateServingMemory(options);
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  // 1 GiB, rounded down to whole pages.
  EXPECT_LE(estimate->kv_pool_bytes, int64_t{1} << 30);
  EXPECT_GT(estimate->kv_pool_bytes, (int64_t{1} << 30) - (int64_t{1} << 20));
  options.dtype = "float8";
  EXPECT_EQ(EstimateServingMemory(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.dtype = "auto";
  options.device = "tpu";
  EXPECT_EQ(EstimateServingMemory(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.device = "cpu";
  options.model_dir = tmp_->Sub("missing");
  EXPECT_FALSE(EstimateServingMemory(options).ok());

  // A named dtype needs config.json alone (sizing a model before downloading its weights);
  // "auto" needs the checkpoint's stored dtype.
  const std::string config_only = tmp_->Sub("config-only");
  ASSERT_EQ(mkdir(config_only.c_str(), 0755), 0);
  {
    std::ifstream in(*dir_ + "/config.json");
    std::ofstream(config_only + "/config.json") << in.rdbuf();
  }
  options.model_dir = config_only;
  options.dtype = "float16";
  absl::StatusOr<ServingMemoryEstimate> sized = EstimateServingMemory(options);
  ASSERT_TRUE(sized.ok()) << sized.status();
  EXPECT_EQ(sized->weight_bytes * 2, estimate->weight_bytes);  // float16 against auto's float32
  options.dtype = "auto";
  EXPECT_FALSE(EstimateServingMemory(options).ok());
}

// The case the old server-side estimate got wrong: on CUDA "auto" keeps the stored float16
// although config.json says float32.
TEST_F(MemoryEstimateTest, OnCudaAutoKeepsTheStoredHalf) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  EngineOptions options;
  options.model_dir = *dir_;
  options.device = "cuda";
  options.kv_pool_bytes = (int64_t{1} << 24) + 12345;
  absl::StatusOr<ServingMemoryEstimate> estimate = EstimateServingMemory(options);
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_EQ(estimate->weight_dtype, "float16");
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const ModelDescription d = (*engine)->Describe();
  const KvPoolUsage pool = (*engine)->PoolUsage();
  EXPECT_EQ(d.dtype, "float16");
  EXPECT_EQ(estimate->weight_bytes, d.weight_bytes);
  EXPECT_EQ(estimate->kv_pool_bytes, pool.page_bytes * pool.total_pages);
  EXPECT_EQ(estimate->workspace_bytes, d.workspace_bytes);
  // Sized from free memory at start-up: the estimate leaves the pool out.
  options.kv_pool_bytes = 0;
  estimate = EstimateServingMemory(options);
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_TRUE(estimate->kv_pool_from_free_memory);
  EXPECT_EQ(estimate->kv_pool_bytes, 0);
}

TEST(LoadedWeightDtypeTest, TheStoredDtypeDecidesAuto) {
  // On CUDA a half checkpoint stays half, whatever config.json says; on CPU "auto" is float32.
  EXPECT_EQ(*LoadedWeightDtype("auto", true, DType::kF16), "float16");
  EXPECT_EQ(*LoadedWeightDtype("auto", true, DType::kBF16), "bfloat16");
  EXPECT_EQ(*LoadedWeightDtype("auto", true, DType::kF32), "float32");
  EXPECT_EQ(*LoadedWeightDtype("auto", false, DType::kF16), "float32");
  EXPECT_EQ(*LoadedWeightDtype("auto", false, DType::kBF16), "float32");
  EXPECT_EQ(*LoadedWeightDtype("half", false, DType::kF32), "float16");
  EXPECT_EQ(*LoadedWeightDtype("float", true, DType::kBF16), "float32");
  EXPECT_EQ(*LoadedWeightDtype("bfloat16", false, DType::kF16), "bfloat16");
  EXPECT_FALSE(LoadedWeightDtype("int8", false, DType::kF32).ok());
  EXPECT_FALSE(LoadedWeightDtype("auto", true, DType::kI32).ok());
}

TEST(WeightBytesTest, CountsTheLoadersTensorsAndRefusesOverflow) {
  std::mt19937 rng(std::random_device{}());
  ModelConfig c;
  c.vocab_size = 100 + rng() % 1000;
  c.hidden_size = 8 * (1 + rng() % 16);
  c.intermediate_size = 16 + rng() % 64;
  c.num_hidden_layers = 1 + rng() % 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 2 * (1 + rng() % 8);
  c.attention_bias = rng() % 2;
  c.tie_word_embeddings = rng() % 2;
  const int64_t h = c.hidden_size, q = 4 * c.head_dim, kv = 2 * c.head_dim;
  int64_t per_layer = 2 * h + (q + 2 * kv) * h + h * q + 3 * c.intermediate_size * h;
  if (c.attention_bias) per_layer += q + 2 * kv;
  const int64_t params = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + h + per_layer * c.num_hidden_layers;
  EXPECT_EQ(*WeightBytes(c, 2), 2 * params);
  c.vocab_size = int64_t{1} << 40;
  c.hidden_size = int64_t{1} << 30;
  EXPECT_EQ(WeightBytes(c, 4).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace squat
