// The step runner on the CPU (the CUDA cases are in gpu_decode_test.cpp): one step batch per
// engine step and one attention call per layer. A step that mixes every KV format, prefill
// chunks and decode rows gives each sequence the greedy tokens it gets alone; the model, the
// attention backend and the kernels share one RoPE table, so a pre-RoPE cache (which rotates
// its stored keys at attention time) agrees bit for bit with the fp16 cache (which stores the
// model's rotated keys) while every key is still full precision; and the step buffers refuse
// what exceeds them without touching any cache.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kvcache/rope.h"
#include "kvcache/standalone_cache.h"
#include "kvcache/step_batch.h"
#include "tests/model_test_support.h"
#include "tests/step_mix_support.h"

namespace squat {
namespace {

class StepRunnerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    // GQA 4:1, head_dim 64 (two SQuat channel blocks of 32).
    dir_ = new std::string(Generate(*tmp_, "gqa", "--preset tiny --seed 19 --num-heads 8 --num-kv-heads 2 "
                                                  "--hidden-size 512 --head-dim 64 --num-layers 2"));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete tmp_;
  }
  void SetUp() override {
    const char* replay = std::getenv("SQUAT_TEST_SEED");
    seed_ = replay ? static_cast<uint32_t>(std::strtoul(replay, nullptr, 10)) : std::random_device{}();
  }
  static TempDir* tmp_;
  static std::string* dir_;
  uint32_t seed_ = 0;
};
TempDir* StepRunnerTest::tmp_ = nullptr;
std::string* StepRunnerTest::dir_ = nullptr;

TEST_F(StepRunnerTest, MixedStepsGiveEachSequenceItsTokensAlone) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto loaded = LoadFrom(*dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  CheckMixedSteps(*loaded->model, seed_);
}

// The table holds cos and sin of the float32 angles p * inv_freq, rounded once from float64.
TEST(RopeTableTest, RowsAreRoundedFloat64CosAndSin) {
  const int64_t d = 64, positions = 3000;
  const at::Tensor inv_freq = at::pow(10000.0, at::arange(0, d, 2, at::kFloat) / static_cast<double>(d)).reciprocal();
  const at::Tensor table = kv::BuildRopeTable(inv_freq, positions, at::kCPU);
  ASSERT_EQ(table.sizes(), at::IntArrayRef({positions, d}));
  ASSERT_EQ(table.scalar_type(), at::kFloat);
  const float* freq = inv_freq.data_ptr<float>();
  const float* row = table.data_ptr<float>();
  for (int64_t p : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{1234}, positions - 1}) {
    for (int64_t j = 0; j < d / 2; ++j) {
      const double angle = static_cast<float>(p) * freq[j];  // the float32 product
      EXPECT_EQ(row[p * d + j], static_cast<float>(std::cos(angle))) << "cos p " << p << " j " << j;
      EXPECT_EQ(row[p * d + d / 2 + j], static_cast<float>(std::sin(angle))) << "sin p " << p << " j " << j;
    }
  }
  // RopeRows gives the model the same bits, halves duplicated, in the compute dtype.
  const at::Tensor positions_wanted = at::tensor({int64_t{5}, int64_t{2999}, int64_t{0}});
  const kv::RopeAngles angles = kv::RopeRows(table, positions_wanted, at::kFloat);
  EXPECT_TRUE(at::equal(angles.cos.narrow(1, 0, d / 2), table.index_select(0, positions_wanted).narrow(1, 0, d / 2)));
  EXPECT_TRUE(at::equal(angles.cos.narrow(1, d / 2, d / 2), angles.cos.narrow(1, 0, d / 2)));
  EXPECT_TRUE(at::equal(angles.sin.narrow(1, 0, d / 2), table.index_select(0, positions_wanted).narrow(1, d / 2, d / 2)));
}

// The model, the reference backend and (gpu_decode_test) the kernels share one RoPE table.
TEST_F(StepRunnerTest, PreRopeCacheRotatesLikeTheModelBitForBit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  auto loaded = LoadFrom(*dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  CheckPreRopeRotatesLikeTheModel(*loaded->model, seed_, "reference");
}

// What exceeds the step's buffers is refused before any cache changes; so is a position past
// the model's RoPE table and a step that is finished before it is sealed.
TEST_F(StepRunnerTest, StepBuffersRefuseWhatExceedsThem) {
  auto loaded = LoadFrom(*dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  LlamaModel& model = *loaded->model;
  auto cache = kv::StandaloneCache::Create(model.kv_shape(), {kv::FullPrecisionFormat(), kv::FullPrecisionFormat()}, 16);
  ASSERT_TRUE(cache.ok()) << cache.status();
  kv::KvCacheManager& kv = cache->manager();
  const std::vector<int32_t> tokens(16, 3);
  auto batch = kv::StepBatch::Create(kv, kv::StepCapacity{8, 1, kv.StepPageIds(1)});
  ASSERT_TRUE(batch.ok()) << batch.status();
  (*batch)->Begin();
  EXPECT_THROW((*batch)->Add(&cache->sequence(0), tokens.data(), 9, true, true), c10::Error);  // rows
  (*batch)->Add(&cache->sequence(0), tokens.data(), 8, true, true);
  EXPECT_THROW((*batch)->Add(&cache->sequence(1), tokens.data(), 1, true, true), c10::Error);  // sequences
  EXPECT_THROW((*batch)->Finish(kv.backend()), c10::Error);  // not sealed
  EXPECT_EQ(cache->sequence(0).length(), 0);
  EXPECT_EQ(cache->sequence(1).length(), 0);
  EXPECT_FALSE(kv::StepBatch::Create(kv, kv::StepCapacity{0, 1, 1}).ok());

  // A model whose table ends at 12 positions refuses the 13th.
  ModelLoadOptions short_table;
  short_table.max_positions = 12;
  auto small = LoadFrom(*dir_, short_table);
  ASSERT_TRUE(small.ok()) << small.status();
  auto small_cache = kv::StandaloneCache::Create(small->model->kv_shape(), kv::FullPrecisionFormat(), 16);
  ASSERT_TRUE(small_cache.ok());
  EXPECT_THROW(ForwardSequence(*small->model, small_cache->manager(), **small_cache, tokens), c10::Error);
  EXPECT_EQ((*small_cache)->length(), 0);
  ForwardSequence(*small->model, small_cache->manager(), **small_cache, {tokens.begin(), tokens.begin() + 12});
  EXPECT_EQ((*small_cache)->length(), 12);
}

}  // namespace
}  // namespace squat
