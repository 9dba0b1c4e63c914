// The engine's metrics hooks on the tiny random checkpoint: EngineObserver sees every step with
// its phase, batch and token count (checked against the chunking a prompt must get), every
// preemption, and GenerationEvent::time_seconds orders the events of a request in time.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <vector>

#include "runtime/engine/engine.h"
#include "tests/engine_test_support.h"

namespace squat {
namespace {

using namespace std::chrono_literals;

constexpr int32_t kVocab = 512;  // the tiny preset

class RecordingObserver final : public EngineObserver {
 public:
  void OnStep(const StepInfo& step) override {
    std::lock_guard<std::mutex> lock(mu_);
    steps_.push_back(step);
  }
  void OnPreemptions(int64_t sequences) override {
    std::lock_guard<std::mutex> lock(mu_);
    preemptions_ += sequences;
  }
  std::vector<StepInfo> TakeSteps() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(steps_, {});
  }
  int64_t preemptions() {
    std::lock_guard<std::mutex> lock(mu_);
    return preemptions_;
  }

 private:
  std::mutex mu_;
  std::vector<StepInfo> steps_;
  int64_t preemptions_ = 0;
};

std::unique_ptr<Engine> MakeEngine(EngineOptions options) {
  options.model_dir = SQUAT_TINY_MODEL_DIR;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerateRequest RandomRequest(std::mt19937& rng, int prompt_len, int max_tokens) {
  GenerateRequest r;
  for (int i = 0; i < prompt_len; ++i) r.prompt_token_ids.push_back(static_cast<int32_t>(rng() % kVocab));
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

// One request at a time: its prompt is fed in ceil(P / chunk) prefill steps of at most `chunk`
// tokens, then each of the n - 1 later tokens in a decode step of one token.
TEST(MetricsEngineObserverTest, StepsFollowTheChunkingOfEachRequest) {
  std::mt19937 rng(std::random_device{}());
  RecordingObserver observer;
  EngineOptions options;
  options.kv_format = "fp16";
  options.max_prefill_chunk = 4 + static_cast<int32_t>(rng() % 13);
  options.observer = &observer;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  const int64_t chunk = options.max_prefill_chunk;
  int64_t expected_steps = 0;
  for (int r = 0; r < 4; ++r) {
    const int prompt = 3 + static_cast<int>(rng() % 40);
    const int max_tokens = 2 + static_cast<int>(rng() % 10);
    SCOPED_TRACE(testing::Message() << "prompt " << prompt << ", max_tokens " << max_tokens << ", chunk " << chunk);
    auto stream = engine->Submit(RandomRequest(rng, prompt, max_tokens));
    ASSERT_TRUE(stream.ok()) << stream.status();
    const std::vector<GenerationEvent> events = testing_support::DrainStream(**stream).events;
    ASSERT_FALSE(events.empty());
    ASSERT_EQ(events.back().finish_reason, FinishReason::kLength);
    ASSERT_TRUE(engine->WaitIdle(10s));

    const std::vector<StepInfo> steps = observer.TakeSteps();
    const int64_t prefill_steps = (prompt + chunk - 1) / chunk;
    ASSERT_EQ(static_cast<int64_t>(steps.size()), prefill_steps + max_tokens - 1);
    int64_t fed = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      const bool prefill = static_cast<int64_t>(i) < prefill_steps;
      EXPECT_EQ(steps[i].prefill, prefill) << "step " << i;
      EXPECT_EQ(steps[i].num_sequences, 1);
      EXPECT_EQ(steps[i].num_tokens, prefill ? std::min<int64_t>(chunk, prompt - fed) : 1) << "step " << i;
      EXPECT_GT(steps[i].duration_seconds, 0);
      EXPECT_LT(steps[i].duration_seconds, 60);
      if (prefill) fed += steps[i].num_tokens;
    }
    EXPECT_EQ(fed, prompt);
    expected_steps += static_cast<int64_t>(steps.size());
    EXPECT_EQ(engine->Stats().steps, expected_steps);
  }
  EXPECT_EQ(observer.preemptions(), 0);
}

// Concurrent requests in a pool too small for all their growth: the observer hears of every
// preemption the scheduler counts, and of every step.
TEST(MetricsEngineObserverTest, PreemptionsAndBatchedStepsAreReported) {
  std::mt19937 rng(std::random_device{}());
  EngineOptions options;
  options.kv_format = "fp16";
  auto probe = MakeEngine(options);
  ASSERT_TRUE(probe);
  const int64_t page_bytes = probe->PoolUsage().page_bytes;
  probe.reset();

  RecordingObserver observer;
  options.observer = &observer;
  options.kv_pool_bytes = page_bytes * 24;  // 8 requests of ~100 tokens need ~7 pages each
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  std::vector<std::shared_ptr<RequestStream>> streams;
  int64_t prompt_tokens = 0;
  for (int r = 0; r < 8; ++r) {
    const int prompt = 5 + static_cast<int>(rng() % 20);
    prompt_tokens += prompt;
    auto stream = engine->Submit(RandomRequest(rng, prompt, 80 + static_cast<int>(rng() % 20)));
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  for (auto& stream : streams) {
    const std::vector<GenerationEvent> events = testing_support::DrainStream(*stream).events;
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().error_message;
  }
  ASSERT_TRUE(engine->WaitIdle(10s));
  const EngineStats stats = engine->Stats();
  const std::vector<StepInfo> steps = observer.TakeSteps();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(observer.preemptions(), stats.preemptions);
  EXPECT_EQ(static_cast<int64_t>(steps.size()), stats.steps);
  int64_t prefill_tokens = 0;
  int max_batch = 0;
  for (const StepInfo& step : steps) {
    EXPECT_GE(step.num_sequences, 1);
    EXPECT_GE(step.num_tokens, step.num_sequences);
    if (step.prefill) {
      prefill_tokens += step.num_tokens;
    } else {
      EXPECT_EQ(step.num_tokens, step.num_sequences);  // one token each
    }
    max_batch = std::max(max_batch, step.num_sequences);
  }
  // Every prompt is fed at least once (recomputed prompts again), decodes ran batched.
  EXPECT_GE(prefill_tokens, prompt_tokens);
  EXPECT_GT(max_batch, 1);
}

TEST(MetricsEngineObserverTest, EventTimesOrderTheRequestsEvents) {
  std::mt19937 rng(std::random_device{}());
  auto engine = MakeEngine(EngineOptions{});
  ASSERT_TRUE(engine);
  auto stream = engine->Submit(RandomRequest(rng, 3 + static_cast<int>(rng() % 20), 3 + static_cast<int>(rng() % 10)));
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<GenerationEvent> events = testing_support::DrainStream(**stream).events;
  ASSERT_GE(events.size(), 2u);
  const GenerationEvent& last = events.back();
  ASSERT_TRUE(last.finished);
  EXPECT_EQ(last.time_seconds, last.timings.total_seconds);
  // The first token is sent right after it was sampled (TTFT), every later one after it.
  EXPECT_GE(events.front().time_seconds, last.timings.time_to_first_token_seconds);
  EXPECT_GT(last.timings.time_to_first_token_seconds, last.timings.queue_seconds);
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GE(events[i].time_seconds, events[i - 1].time_seconds) << "event " << i;
  }
}

}  // namespace
}  // namespace squat
