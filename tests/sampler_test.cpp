// Sampler tests: empirical frequencies against an independent long-double reference of the
// filtered distribution, greedy/argmax, seeding, penalties, logprobs, non-finite logits and
// parameter validation. Inputs are fresh random logits per run (SQUAT_TEST_SEED reproduces).
#include "runtime/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace squat {
namespace {

using ::testing::HasSubstr;

uint64_t RunSeed() {
  static const uint64_t seed = []() -> uint64_t {
    if (const char* env = std::getenv("SQUAT_TEST_SEED")) return std::strtoull(env, nullptr, 0);
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }();
  return seed;
}

class SamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    rng_.seed(RunSeed() ^ std::hash<std::string>()(name));
    trace_ = std::make_unique<::testing::ScopedTrace>(
        __FILE__, __LINE__, "SQUAT_TEST_SEED=" + std::to_string(RunSeed()));
  }
  void TearDown() override { trace_.reset(); }

  std::vector<float> RandomLogits(int vocab, double stddev) {
    std::normal_distribution<double> normal(0.0, stddev);
    std::vector<float> logits(vocab);
    for (float& logit : logits) logit = static_cast<float>(normal(rng_));
    return logits;
  }
  uint64_t NextSeed() { return rng_(); }

  std::mt19937_64 rng_;
  std::unique_ptr<::testing::ScopedTrace> trace_;
};

// --- independent reference ------------------------------------------------------------------

// Token ids by logit, highest first; ties keep the lower id first (stable sort over ids).
std::vector<int> DescendingOrder(const std::vector<float>& logits) {
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return logits[a] > logits[b]; });
  return order;
}

std::vector<long double> LogSoftmax(const std::vector<float>& logits, long double temperature) {
  long double max_scaled = -std::numeric_limits<long double>::infinity();
  for (float logit : logits) max_scaled = std::max(max_scaled, logit / temperature);
  long double total = 0;
  for (float logit : logits) total += std::exp(logit / temperature - max_scaled);
  std::vector<long double> result;
  for (float logit : logits) result.push_back(logit / temperature - max_scaled - std::log(total));
  return result;
}

// Softmax probabilities at `temperature`, highest first.
std::vector<long double> SortedProbs(const std::vector<float>& logits, float temperature) {
  std::vector<long double> probs;
  for (long double log_prob : LogSoftmax(logits, temperature)) probs.push_back(std::exp(log_prob));
  std::sort(probs.rbegin(), probs.rend());
  return probs;
}

// The distribution Sample should draw from (penalties not included): temperature, then top-k,
// then top-p on the renormalised top-k distribution, then min-p, renormalised.
std::vector<long double> ReferenceDistribution(const std::vector<float>& logits,
                                               const SamplingParams& params) {
  const int vocab = static_cast<int>(logits.size());
  const std::vector<int> order = DescendingOrder(logits);
  std::vector<long double> probs(vocab, 0.0L);
  if (params.temperature == 0.0f) {
    probs[order[0]] = 1.0L;
    return probs;
  }
  const std::vector<long double> log_probs = LogSoftmax(logits, params.temperature);
  for (int i = 0; i < vocab; ++i) probs[i] = std::exp(log_probs[i]);

  std::vector<bool> keep(vocab, true);
  const int top_k = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  for (int rank = top_k; rank < vocab; ++rank) keep[order[rank]] = false;
  if (params.top_p < 1.0f) {
    long double top_k_mass = 0;
    for (int rank = 0; rank < top_k; ++rank) top_k_mass += probs[order[rank]];
    long double cumulative = 0;
    int last = top_k - 1;
    for (int rank = 0; rank < top_k; ++rank) {
      cumulative += probs[order[rank]] / top_k_mass;
      if (cumulative >= params.top_p) {
        last = rank;
        break;
      }
    }
    for (int rank = last + 1; rank < vocab; ++rank) keep[order[rank]] = false;
  }
  if (params.min_p > 0.0f) {
    const long double max_prob = probs[order[0]];
    for (int i = 0; i < vocab; ++i)
      if (probs[i] < params.min_p * max_prob) keep[i] = false;
  }
  long double kept = 0;
  for (int i = 0; i < vocab; ++i)
    if (keep[i]) kept += probs[i];
  for (int i = 0; i < vocab; ++i) probs[i] = keep[i] ? probs[i] / kept : 0.0L;
  return probs;
}

// Penalties as vLLM defines them, computed on one logit in double.
double ReferencePenalised(float logit, int token, const SamplingParams& params,
                          const std::set<int>& prompt, const std::map<int, int>& counts) {
  double value = logit;
  const auto found = counts.find(token);
  const int count = found == counts.end() ? 0 : found->second;
  if (params.repetition_penalty != 1.0f && (prompt.count(token) > 0 || count > 0))
    value = value > 0 ? value / params.repetition_penalty : value * params.repetition_penalty;
  if (count > 0) value -= count * static_cast<double>(params.frequency_penalty) +
                          static_cast<double>(params.presence_penalty);
  return value;
}

// --- statistics -----------------------------------------------------------------------------

std::vector<int64_t> DrawCounts(const SamplingParams& params, const std::vector<float>& logits,
                                int draws, uint64_t seed) {
  Sampler sampler(params, {}, seed);
  std::vector<int64_t> counts(logits.size(), 0);
  std::vector<float> work;
  for (int i = 0; i < draws; ++i) {
    work = logits;
    const SampledToken token = sampler.Sample(work.data(), static_cast<int32_t>(work.size()));
    EXPECT_GE(token.token_id, 0);
    EXPECT_LT(token.token_id, static_cast<int32_t>(logits.size()));
    ++counts[token.token_id];
  }
  return counts;
}

// Tokens outside the support must never be drawn; every other count must lie within 5 sigma
// of its binomial mean (plus 5 counts so that rare tokens do not trip the normal
// approximation).
void ExpectCountsMatch(const std::vector<int64_t>& counts, const std::vector<long double>& probs,
                       int draws) {
  int support = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0L) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the filtered support";
      continue;
    }
    ++support;
    const double p = static_cast<double>(probs[i]);
    const double mean = draws * p;
    const double bound = 5.0 * std::sqrt(draws * p * (1.0 - p)) + 5.0;
    EXPECT_LE(std::abs(counts[i] - mean), bound)
        << "token " << i << ": count " << counts[i] << ", expected " << mean;
  }
  EXPECT_GT(support, 0);
}

void ExpectSamplesMatchReference(const SamplingParams& params, const std::vector<float>& logits,
                                 int draws, uint64_t seed) {
  const std::vector<long double> probs = ReferenceDistribution(logits, params);
  ExpectCountsMatch(DrawCounts(params, logits, draws, seed), probs, draws);
}

int KeptCount(const std::vector<long double>& probs) {
  return static_cast<int>(std::count_if(probs.begin(), probs.end(),
                                        [](long double p) { return p > 0; }));
}

constexpr int kVocab = 40;
constexpr int kDraws = 100000;

// --- distributions --------------------------------------------------------------------------

TEST_F(SamplerTest, TemperatureScalesTheSoftmax) {
  for (float temperature : {0.35f, 1.0f, 2.2f}) {
    SCOPED_TRACE(temperature);
    SamplingParams params;
    params.temperature = temperature;
    ExpectSamplesMatchReference(params, RandomLogits(kVocab, 1.5), kDraws, NextSeed());
  }
}

TEST_F(SamplerTest, TopKKeepsTheKMostLikely) {
  SamplingParams params;
  params.top_k = 6;
  const std::vector<float> logits = RandomLogits(kVocab, 1.5);
  EXPECT_EQ(KeptCount(ReferenceDistribution(logits, params)), 6);
  ExpectSamplesMatchReference(params, logits, kDraws, NextSeed());
}

TEST_F(SamplerTest, TiesAtTheTopKBoundaryKeepTheLowerIds) {
  // Logits from a few levels, so that the k-th place falls inside a group of equal logits.
  std::vector<float> logits(kVocab);
  std::uniform_int_distribution<int> level(0, 3);
  for (float& logit : logits) logit = 0.7f * level(rng_);
  const std::vector<int> order = DescendingOrder(logits);
  int top_k = std::uniform_int_distribution<int>(2, 20)(rng_);
  while (top_k < kVocab - 1 && logits[order[top_k]] != logits[order[top_k - 1]]) ++top_k;
  SamplingParams params;
  params.top_k = top_k;  // splits the tie group of order[top_k - 1] and order[top_k]
  params.temperature = 1.3f;
  ExpectSamplesMatchReference(params, logits, kDraws, NextSeed());
}

TEST_F(SamplerTest, TopPKeepsTheSmallestNucleus) {
  const std::vector<float> logits = RandomLogits(kVocab, 1.5);
  // p halfway between two cumulative sums, so that the nucleus is a random 3..15 tokens and
  // no token sits on the boundary.
  const int size = std::uniform_int_distribution<int>(3, 15)(rng_);
  const std::vector<long double> sorted = SortedProbs(logits, 1.0f);
  const long double below = std::accumulate(sorted.begin(), sorted.begin() + size - 1, 0.0L);
  SamplingParams params;
  params.top_p = static_cast<float>(below + sorted[size - 1] / 2);
  EXPECT_EQ(KeptCount(ReferenceDistribution(logits, params)), size);
  ExpectSamplesMatchReference(params, logits, kDraws, NextSeed());
}

TEST_F(SamplerTest, TopPKeepsTheTopTokenWhenItAloneExceedsP) {
  SamplingParams params;
  params.top_p = 0.05f;
  std::vector<float> logits = RandomLogits(kVocab, 1.0);
  const int top = DescendingOrder(logits)[0];
  logits[top] += 3.0f;  // top token alone carries well over 5%
  const std::vector<int64_t> counts = DrawCounts(params, logits, 2000, NextSeed());
  EXPECT_EQ(counts[top], 2000);
}

TEST_F(SamplerTest, MinPDropsTokensBelowTheScaledMax) {
  const std::vector<float> logits = RandomLogits(kVocab, 1.5);
  // min_p between the ratios of two neighbouring ranks, so that 3..15 tokens survive.
  const int size = std::uniform_int_distribution<int>(3, 15)(rng_);
  SamplingParams params;
  params.temperature = 0.8f;
  const std::vector<long double> sorted = SortedProbs(logits, params.temperature);
  params.min_p = static_cast<float>(std::sqrt(sorted[size - 1] * sorted[size]) / sorted[0]);
  EXPECT_EQ(KeptCount(ReferenceDistribution(logits, params)), size);
  ExpectSamplesMatchReference(params, logits, kDraws, NextSeed());
}

TEST_F(SamplerTest, CombinedFiltersApplyInOrder) {
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 12;
  params.top_p = 0.8f;
  params.min_p = 0.04f;
  ExpectSamplesMatchReference(params, RandomLogits(kVocab, 1.2), kDraws, NextSeed());

  // Top-p measured against the renormalised top-k distribution cuts tighter than against the
  // full one; a mild temperature makes that difference visible.
  params = SamplingParams();
  params.temperature = 1.6f;
  params.top_k = 8;
  params.top_p = 0.7f;
  ExpectSamplesMatchReference(params, RandomLogits(kVocab, 1.0), kDraws, NextSeed());
}

TEST_F(SamplerTest, TopPOverAWideNucleus) {
  // A flat distribution: the nucleus is hundreds of tokens spread over many weight buckets.
  constexpr int kWideVocab = 1000;
  constexpr int kWideDraws = 40000;
  SamplingParams params;
  params.top_p = 0.5f;
  const std::vector<float> logits = RandomLogits(kWideVocab, 0.5);
  const int kept = KeptCount(ReferenceDistribution(logits, params));
  EXPECT_GT(kept, 256);
  ExpectSamplesMatchReference(params, logits, kWideDraws, NextSeed());
}

TEST_F(SamplerTest, LargeVocabularyStaysInsideTheFilteredSet) {
  constexpr int kLlamaVocab = 128256;
  const std::vector<float> logits = RandomLogits(kLlamaVocab, 3.0);
  const std::vector<int> order = DescendingOrder(logits);

  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 40;
  params.top_p = 0.9f;
  params.min_p = 0.01f;
  const std::vector<long double> probs = ReferenceDistribution(logits, params);
  Sampler sampler(params, {}, NextSeed());
  std::vector<float> work;
  for (int i = 0; i < 200; ++i) {
    work = logits;
    const SampledToken token = sampler.Sample(work.data(), kLlamaVocab);
    ASSERT_GE(token.token_id, 0);
    ASSERT_LT(token.token_id, kLlamaVocab);
    EXPECT_GT(probs[token.token_id], 0.0L) << "token " << token.token_id;
  }
}

// --- greedy and logprobs --------------------------------------------------------------------

TEST_F(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  constexpr int kGreedyVocab = 1000;
  std::vector<float> logits = RandomLogits(kGreedyVocab, 2.0);
  int argmax = 0;
  for (int i = 1; i < kGreedyVocab; ++i)
    if (logits[i] > logits[argmax]) argmax = i;
  const std::vector<long double> log_probs = LogSoftmax(logits, 1.0L);

  for (float temperature : {0.0f, 1e-7f}) {
    SamplingParams params;
    params.temperature = temperature;
    Sampler sampler(params, {}, NextSeed());
    std::vector<float> work = logits;
    const SampledToken token = sampler.Sample(work.data(), kGreedyVocab);
    EXPECT_EQ(token.token_id, argmax);
    EXPECT_NEAR(token.logprob, static_cast<double>(log_probs[argmax]), 1e-5);
  }

  // Top-k of 1 at any temperature is argmax too.
  SamplingParams top_one;
  top_one.top_k = 1;
  top_one.temperature = 1.7f;
  EXPECT_EQ(DrawCounts(top_one, logits, 200, NextSeed())[argmax], 200);

  // Two tokens tied above everything: the lower id wins.
  std::uniform_int_distribution<int> pick(0, kGreedyVocab - 1);
  int first = pick(rng_), second = pick(rng_);
  while (second == first) second = pick(rng_);
  const float top = logits[argmax] + 1.0f;
  logits[first] = logits[second] = top;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  Sampler sampler(greedy, {}, NextSeed());
  EXPECT_EQ(sampler.Sample(logits.data(), kGreedyVocab).token_id, std::min(first, second));
}

TEST_F(SamplerTest, LogprobIsLogSoftmaxBeforeTruncation) {
  SamplingParams params;
  params.temperature = 0.7f;
  params.top_k = 5;
  params.top_p = 0.9f;
  params.min_p = 0.02f;
  params.logprobs = 1;
  Sampler sampler(params, {}, NextSeed());
  for (int step = 0; step < 200; ++step) {
    const std::vector<float> logits = RandomLogits(300, 2.0);
    const std::vector<long double> log_probs = LogSoftmax(logits, params.temperature);
    std::vector<float> work = logits;
    const SampledToken token = sampler.Sample(work.data(), 300);
    ASSERT_GE(token.token_id, 0);
    EXPECT_NEAR(token.logprob, static_cast<double>(log_probs[token.token_id]), 1e-5);
  }
}

// --- seeding --------------------------------------------------------------------------------

class SeedingTest : public SamplerTest {
 protected:
  void SetUp() override {
    SamplerTest::SetUp();
    for (int step = 0; step < 64; ++step) steps_.push_back(RandomLogits(200, 0.8));
  }
  std::vector<int32_t> Sequence(const SamplingParams& params, uint64_t fallback_seed) {
    Sampler sampler(params, {}, fallback_seed);
    std::vector<int32_t> tokens;
    for (std::vector<float> logits : steps_) {
      tokens.push_back(sampler.Sample(logits.data(), static_cast<int32_t>(logits.size())).token_id);
    }
    return tokens;
  }
  std::vector<std::vector<float>> steps_;
};

TEST_F(SeedingTest, ExplicitSeedReproducesAndOverridesTheFallback) {
  SamplingParams params;
  params.top_k = 50;
  params.has_seed = true;
  params.seed = NextSeed();
  const std::vector<int32_t> first = Sequence(params, NextSeed());
  EXPECT_EQ(Sequence(params, NextSeed()), first);  // the fallback seed is ignored
  params.seed += 1;
  EXPECT_NE(Sequence(params, NextSeed()), first);
}

TEST_F(SeedingTest, FallbackSeedIsUsedWithoutAnExplicitSeed) {
  SamplingParams params;
  params.has_seed = false;
  params.seed = NextSeed();  // ignored while has_seed is false
  const uint64_t fallback = NextSeed();
  const std::vector<int32_t> first = Sequence(params, fallback);
  EXPECT_EQ(Sequence(params, fallback), first);
  EXPECT_NE(Sequence(params, fallback + 1), first);
  params.has_seed = true;
  params.seed = fallback;
  EXPECT_EQ(Sequence(params, NextSeed()), first);  // same stream whichever way it was seeded
}

// --- penalties ------------------------------------------------------------------------------

struct PenaltyCase {
  const char* name;
  float repetition;
  float frequency;
  float presence;
};

TEST_F(SamplerTest, PenaltiesChangeTheRightLogitsByTheRightAmount) {
  const PenaltyCase cases[] = {
      {"repetition>1", 1.4f, 0.0f, 0.0f}, {"repetition<1", 0.6f, 0.0f, 0.0f},
      {"frequency>0", 1.0f, 0.7f, 0.0f},  {"frequency<0", 1.0f, -1.3f, 0.0f},
      {"presence>0", 1.0f, 0.0f, 1.5f},   {"presence<0", 1.0f, 0.0f, -0.4f},
      {"all", 1.25f, 0.45f, -0.8f},
  };
  constexpr int kSmallVocab = 12;  // small, so output tokens repeat and counts exceed 1
  for (const PenaltyCase& c : cases) {
    SCOPED_TRACE(c.name);
    SamplingParams params;
    params.repetition_penalty = c.repetition;
    params.frequency_penalty = c.frequency;
    params.presence_penalty = c.presence;
    // Prompt ids include some out of range, which must be ignored.
    std::vector<int32_t> prompt;
    std::uniform_int_distribution<int> pick(0, kSmallVocab - 1);
    for (int i = 0; i < 4; ++i) prompt.push_back(pick(rng_));
    prompt.push_back(kSmallVocab + 5);
    prompt.push_back(-3);
    const std::set<int> prompt_set(prompt.begin(), prompt.end());

    Sampler sampler(params, prompt, NextSeed());
    std::map<int, int> counts;
    int changed = 0;
    for (int step = 0; step < 30; ++step) {
      const std::vector<float> logits = RandomLogits(kSmallVocab, 2.0);  // both signs
      std::vector<float> work = logits;
      const SampledToken token = sampler.Sample(work.data(), kSmallVocab);
      for (int i = 0; i < kSmallVocab; ++i) {
        const double expected = ReferencePenalised(logits[i], i, params, prompt_set, counts);
        EXPECT_NEAR(work[i], expected, 1e-5 * std::max(1.0, std::abs(expected)))
            << "step " << step << " token " << i;
        if (std::abs(expected - logits[i]) > 1e-3) ++changed;
      }
      ASSERT_GE(token.token_id, 0);
      ++counts[token.token_id];
    }
    EXPECT_GT(changed, 0);
    const std::map<int, int> recorded(sampler.output_counts().begin(),
                                      sampler.output_counts().end());
    EXPECT_EQ(recorded, counts);
  }
}

TEST_F(SamplerTest, RepetitionPenaltyShapesTheSampledDistribution) {
  SamplingParams params;
  params.repetition_penalty = 1.8f;
  params.temperature = 0.9f;
  params.top_k = 20;
  const std::vector<float> logits = RandomLogits(kVocab, 1.5);
  std::vector<int32_t> prompt;
  std::uniform_int_distribution<int> pick(0, kVocab - 1);
  for (int i = 0; i < 10; ++i) prompt.push_back(pick(rng_));
  const std::set<int> prompt_set(prompt.begin(), prompt.end());

  std::vector<float> penalised(kVocab);
  for (int i = 0; i < kVocab; ++i)
    penalised[i] = static_cast<float>(ReferencePenalised(logits[i], i, params, prompt_set, {}));
  const std::vector<long double> probs = ReferenceDistribution(penalised, params);

  // A fresh sampler per draw, so that drawn tokens never join the penalised set.
  constexpr int kPenaltyDraws = 50000;
  std::vector<int64_t> counts(kVocab, 0);
  std::vector<float> work;
  for (int i = 0; i < kPenaltyDraws; ++i) {
    Sampler sampler(params, prompt, NextSeed());
    work = logits;
    ++counts[sampler.Sample(work.data(), kVocab).token_id];
  }
  ExpectCountsMatch(counts, probs, kPenaltyDraws);
}

// --- non-finite logits ----------------------------------------------------------------------

TEST_F(SamplerTest, NanAndInfinityNeverCrashOrWin) {
  constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> logits = RandomLogits(kVocab, 1.5);
  std::set<int> masked;
  // The highest logit becomes NaN, so a NaN-unaware argmax would differ.
  const int top = DescendingOrder(logits)[0];
  logits[top] = kNan;
  masked.insert(top);
  std::uniform_int_distribution<int> pick(0, kVocab - 1);
  for (int i = 0; i < 10; ++i) {
    const int token = pick(rng_);
    logits[token] = i % 2 == 0 ? kNan : -kInf;
    masked.insert(token);
  }

  SamplingParams plain, filtered, greedy;
  filtered.top_k = 10;
  filtered.top_p = 0.9f;
  filtered.min_p = 0.05f;
  filtered.repetition_penalty = 1.2f;
  greedy.temperature = 0.0f;
  for (const SamplingParams& params : {plain, filtered, greedy}) {
    Sampler sampler(params, {0, 1, 2}, NextSeed());
    for (int draw = 0; draw < 300; ++draw) {
      std::vector<float> work = logits;
      const SampledToken token = sampler.Sample(work.data(), kVocab);
      ASSERT_GE(token.token_id, 0);
      EXPECT_EQ(masked.count(token.token_id), 0u) << "masked token " << token.token_id;
      EXPECT_TRUE(std::isfinite(token.logprob));
    }
  }

  // +inf tokens take all the mass, shared equally; greedy takes the lower one.
  int low = pick(rng_), high = pick(rng_);
  while (high == low) high = pick(rng_);
  if (low > high) std::swap(low, high);
  std::vector<float> infinite = RandomLogits(kVocab, 1.0);
  infinite[low] = infinite[high] = kInf;
  std::vector<long double> halves(kVocab, 0.0L);
  halves[low] = halves[high] = 0.5L;
  ExpectCountsMatch(DrawCounts(plain, infinite, 4000, NextSeed()), halves, 4000);
  Sampler greedy_sampler(greedy, {}, NextSeed());
  EXPECT_EQ(greedy_sampler.Sample(infinite.data(), kVocab).token_id, low);

  // Nothing finite at all: token 0 by convention.
  std::vector<float> all_masked(kVocab);
  for (int i = 0; i < kVocab; ++i) all_masked[i] = i % 3 == 0 ? kNan : -kInf;
  for (const SamplingParams& params : {plain, filtered, greedy}) {
    Sampler sampler(params, {}, NextSeed());
    std::vector<float> work = all_masked;
    EXPECT_EQ(sampler.Sample(work.data(), kVocab).token_id, 0);
  }
}

// --- validation -----------------------------------------------------------------------------

TEST(SamplingParamsValidation, AcceptsDefaultsAndBoundaries) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams()).ok());
  SamplingParams edge;
  edge.max_tokens = 0;  // the engine default
  edge.temperature = 0.0f;
  edge.top_k = 0;
  edge.top_p = 1.0f;
  edge.min_p = 1.0f;
  edge.repetition_penalty = 1e-3f;
  edge.presence_penalty = -2.0f;
  edge.frequency_penalty = 2.0f;
  edge.logprobs = 20;
  edge.stop = {"x"};
  edge.stop_token_ids = {0};
  EXPECT_TRUE(ValidateSamplingParams(edge).ok()) << ValidateSamplingParams(edge);
  // The stop limits are inclusive.
  edge.stop.assign(kMaxStopStrings, std::string(kMaxStopStringBytes, 's'));
  edge.stop_token_ids.assign(kMaxStopTokenIds, 7);
  EXPECT_TRUE(ValidateSamplingParams(edge).ok()) << ValidateSamplingParams(edge);
  edge.min_p = 0.0f;
  edge.presence_penalty = 2.0f;
  edge.frequency_penalty = -2.0f;
  edge.logprobs = 0;
  edge.top_p = 1e-6f;
  EXPECT_TRUE(ValidateSamplingParams(edge).ok()) << ValidateSamplingParams(edge);
}

TEST(SamplingParamsValidation, RejectsEachBadFieldByName) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct BadCase {
    const char* field;
    std::function<void(SamplingParams&)> spoil;
  };
  const std::vector<BadCase> cases = {
      {"max_tokens", [](SamplingParams& p) { p.max_tokens = -1; }},
      {"max_tokens", [](SamplingParams& p) { p.max_tokens = -4; }},
      {"temperature", [](SamplingParams& p) { p.temperature = -0.1f; }},
      {"temperature", [&](SamplingParams& p) { p.temperature = nan; }},
      {"temperature", [&](SamplingParams& p) { p.temperature = inf; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -1; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.01f; }},
      {"top_p", [&](SamplingParams& p) { p.top_p = nan; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.01f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.5f; }},
      {"min_p", [&](SamplingParams& p) { p.min_p = nan; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.0f; }},
      {"repetition_penalty", [&](SamplingParams& p) { p.repetition_penalty = inf; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = 2.5f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = -2.01f; }},
      {"presence_penalty", [&](SamplingParams& p) { p.presence_penalty = nan; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = -3.0f; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 2.01f; }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = -1; }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = 21; }},
      {"stop[1]", [](SamplingParams& p) { p.stop = {"ok", ""}; }},
      {"stop_token_ids[0]", [](SamplingParams& p) { p.stop_token_ids = {-2}; }},
      {"stop has 65", [](SamplingParams& p) { p.stop.assign(kMaxStopStrings + 1, "x"); }},
      {"stop[2] has 1025", [](SamplingParams& p) { p.stop = {"a", "b", std::string(kMaxStopStringBytes + 1, 'c')}; }},
      {"stop_token_ids has 1025", [](SamplingParams& p) { p.stop_token_ids.assign(kMaxStopTokenIds + 1, 3); }},
  };
  for (const BadCase& c : cases) {
    SamplingParams params;
    c.spoil(params);
    const absl::Status status = ValidateSamplingParams(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.field));
  }
}

// The engine takes the device argmax for plain-greedy sequences: that must be exactly what
// Sample would pick, and every other setting must keep sampling on the host.
TEST(SamplerFastPath, PlainGreedyArgmaxEqualsSample) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 3.0f);
  SamplingParams greedy;
  greedy.temperature = 0;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits(1000 + rng() % 2000);
    for (float& l : logits) l = normal(rng);
    int32_t best = 0;
    for (int32_t i = 1; i < static_cast<int32_t>(logits.size()); ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    Sampler sampler(greedy, {}, rng());
    ASSERT_TRUE(sampler.IsPlainGreedy());
    EXPECT_EQ(sampler.Sample(logits.data(), static_cast<int32_t>(logits.size())).token_id, best);
    EXPECT_EQ(sampler.AcceptArgmax(best).token_id, best);
    EXPECT_EQ(sampler.output_counts().at(best), 2);
  }
  const std::vector<std::function<void(SamplingParams&)>> not_plain = {
      [](SamplingParams& p) { p.temperature = 0.7f; },
      [](SamplingParams& p) { p.repetition_penalty = 1.1f; },
      [](SamplingParams& p) { p.presence_penalty = 0.5f; },
      [](SamplingParams& p) { p.frequency_penalty = 0.5f; },
      [](SamplingParams& p) { p.logprobs = 1; },
  };
  for (const auto& spoil : not_plain) {
    SamplingParams params = greedy;
    spoil(params);
    EXPECT_FALSE(Sampler(params, {}, 1).IsPlainGreedy());
  }
}

}  // namespace
}  // namespace squat
