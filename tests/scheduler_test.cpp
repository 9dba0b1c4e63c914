// Continuous batching on the tiny random checkpoint: batched results equal the same requests
// run alone (every KV method), preemption under a small pool, chunked prefill, cancellation
// freeing pages within a step, and a random workload that leaves the pool empty.
//
// Equality tolerance. Logprobs of the same position must agree within kLogprobTolerance
// (absolute, natural log) and greedy ids must agree token for token. Batched GEMMs round
// differently from single-row ones (the BLAS blocks by row count), which moves logits by float32
// noise: measured up to ~1e-5 with the fp16 format; in the quantized formats that noise can tip
// a stored key or value across a rounding boundary of its 2- or 4-bit code, measured up to
// ~7e-4 after preemption and replay. The tiny random model's next-token distributions are
// nearly flat, so two candidates are sometimes equally likely within that noise: the runs may
// then part (different ids at one position, each pick's logprob within the tolerance of the
// other's), and what follows is not compared. At most a quarter of the requests may part.
#include "runtime/engine/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "tests/engine_test_support.h"

namespace squat {
namespace {

using namespace std::chrono_literals;

constexpr float kLogprobTolerance = 2e-3f;
constexpr int32_t kVocab = 512;  // the tiny preset

using Outcome = testing_support::DrainedStream;
using testing_support::DrainStream;

std::unique_ptr<Engine> MakeEngine(EngineOptions options) {
  options.model_dir = SQUAT_TINY_MODEL_DIR;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

GenerateRequest RandomGreedy(std::mt19937& rng, int prompt_len, int max_tokens, const std::string& method) {
  GenerateRequest r;
  for (int i = 0; i < prompt_len; ++i) r.prompt_token_ids.push_back(static_cast<int32_t>(rng() % kVocab));
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  r.sampling.logprobs = 1;
  r.kv_method = method;
  return r;
}

Outcome RunAlone(Engine& engine, const GenerateRequest& request) {
  auto stream = engine.Submit(request);
  EXPECT_TRUE(stream.ok()) << stream.status();
  if (!stream.ok()) return {};
  return DrainStream(**stream);
}

std::vector<Outcome> RunTogether(Engine& engine, const std::vector<GenerateRequest>& requests) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& r : requests) {
    auto stream = engine.Submit(r);
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return {};
    streams.push_back(*stream);
  }
  std::vector<Outcome> outcomes;
  for (auto& s : streams) outcomes.push_back(DrainStream(*s));
  return outcomes;
}

// Compares two greedy runs of one request per the tolerance above; returns whether they parted
// at a near-tie.
bool ExpectSameGeneration(const Outcome& alone, const Outcome& batched, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_NE(batched.last.finish_reason, FinishReason::kError) << batched.last.error_message;
  EXPECT_EQ(batched.ids.size(), alone.ids.size());
  EXPECT_EQ(batched.logprobs.size(), batched.ids.size());
  EXPECT_EQ(alone.logprobs.size(), alone.ids.size());
  const size_t n = std::min({batched.ids.size(), alone.ids.size(), batched.logprobs.size(), alone.logprobs.size()});
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(batched.logprobs[i], alone.logprobs[i], kLogprobTolerance) << "token " << i;
    if (batched.ids[i] != alone.ids[i]) return true;  // a tie within the tolerance
  }
  EXPECT_EQ(batched.last.finish_reason, alone.last.finish_reason);
  return false;
}

void ExpectSameGenerations(const std::vector<Outcome>& alone, const std::vector<Outcome>& batched) {
  ASSERT_EQ(batched.size(), alone.size());
  size_t parted = 0;
  for (size_t i = 0; i < alone.size(); ++i) {
    parted += ExpectSameGeneration(alone[i], batched[i], "request " + std::to_string(i));
  }
  EXPECT_LE(parted, alone.size() / 4);
}

class BatchedEqualsAlone : public ::testing::TestWithParam<const char*> {};

TEST_P(BatchedEqualsAlone, GreedyIdsAndLogprobs) {
  const std::string method = GetParam();
  auto engine = MakeEngine(EngineOptions{});
  ASSERT_TRUE(engine);
  std::mt19937 rng(std::random_device{}());
  // Mixed prompt lengths (some below, some above the residual window R = 32) and max_tokens.
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(RandomGreedy(rng, 3 + static_cast<int>(rng() % 110), 6 + static_cast<int>(rng() % 40), method));
  }
  std::vector<Outcome> alone;
  const int64_t steps_before_alone = engine->Stats().steps;
  for (const auto& r : requests) alone.push_back(RunAlone(*engine, r));
  const int64_t steps_alone = engine->Stats().steps - steps_before_alone;

  const int64_t steps_before = engine->Stats().steps;
  std::vector<Outcome> batched = RunTogether(*engine, requests);
  const int64_t steps_batched = engine->Stats().steps - steps_before;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(alone[i].ids.size(), static_cast<size_t>(requests[i].sampling.max_tokens));
  }
  ExpectSameGenerations(alone, batched);
  // Alone, every request takes max_tokens steps; together they share steps.
  EXPECT_LT(steps_batched, steps_alone);
  EXPECT_TRUE(engine->WaitIdle(10s));
  EXPECT_EQ(engine->PoolUsage().used_pages, 0);
}

INSTANTIATE_TEST_SUITE_P(AllKvMethods, BatchedEqualsAlone, ::testing::Values("fp16", "kivi", "squat", "squat-post"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A pool that holds every request's prompt but only half of their growth: as the eight
// requests decode, the newest are preempted (mid-decode, SQuat state kept) and recomputed later.
class PreemptionKeepsOutputs : public ::testing::TestWithParam<const char*> {};

TEST_P(PreemptionKeepsOutputs, EveryRequestCompletesAsAlone) {
  const std::string method = GetParam();
  std::mt19937 rng(std::random_device{}());
  // Both engines keep the fp16 default so that their pages are equally small (16 float32
  // tokens; 96 tokens of a 4-bit format): every request grows by a page or more while decoding.
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(RandomGreedy(rng, 5 + static_cast<int>(rng() % 30), 220 + static_cast<int>(rng() % 80), method));
    if (method != "fp16") requests.back().k_bits = requests.back().v_bits = 4;
  }
  EngineOptions options;
  options.kv_format = "fp16";
  options.max_prefill_chunk = 32;
  auto probe = MakeEngine(options);
  ASSERT_TRUE(probe);
  const int64_t page_bytes = probe->PoolUsage().page_bytes;
  // Pages each request holds after its prompt, and at its peak, run alone.
  int64_t start_pages = 0, peak_pages = 0;
  std::vector<Outcome> alone;
  for (const auto& r : requests) {
    auto stream = probe->Submit(r);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Outcome out;
    GenerationEvent event;
    int64_t first = -1, most = 0;
    while ((*stream)->Next(&event, 120s)) {
      out.ids.insert(out.ids.end(), event.token_ids.begin(), event.token_ids.end());
      out.logprobs.insert(out.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
      if (event.finished) {
        out.last = event;
        break;
      }
      const int64_t used = probe->PoolUsage().used_pages;
      if (first < 0) first = used;
      most = std::max(most, used);
    }
    start_pages += first;
    peak_pages += most;
    alone.push_back(out);
  }
  probe.reset();
  ASSERT_GT(peak_pages, start_pages);

  // Room for every request's prompt but for only part of their growth.
  options.kv_pool_bytes = page_bytes * (start_pages + (peak_pages - start_pages) / 2);
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  std::vector<Outcome> batched = RunTogether(*engine, requests);
  ExpectSameGenerations(alone, batched);
  EXPECT_GT(engine->Stats().preemptions, 0);
  EXPECT_TRUE(engine->WaitIdle(10s));
  EXPECT_EQ(engine->PoolUsage().used_pages, 0);
}

INSTANTIATE_TEST_SUITE_P(Methods, PreemptionKeepsOutputs, ::testing::Values("fp16", "kivi", "squat", "squat-post"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

class ChunkedPrefill : public ::testing::TestWithParam<const char*> {};

TEST_P(ChunkedPrefill, LongPromptEqualsUnchunkedRun) {
  const std::string method = GetParam();
  std::mt19937 rng(std::random_device{}());
  const int prompt_len = 150 + static_cast<int>(rng() % 100);
  const int max_tokens = 20;
  const GenerateRequest request = RandomGreedy(rng, prompt_len, max_tokens, method);

  auto whole = MakeEngine(EngineOptions{});
  ASSERT_TRUE(whole);
  const Outcome reference = RunAlone(*whole, request);
  EXPECT_EQ(whole->Stats().steps, max_tokens);  // the prompt fits in one step's chunk
  whole.reset();

  EngineOptions chunked_options;
  chunked_options.max_prefill_chunk = 16 + static_cast<int32_t>(rng() % 40);
  auto chunked = MakeEngine(chunked_options);
  ASSERT_TRUE(chunked);
  const Outcome out = RunAlone(*chunked, request);
  ExpectSameGeneration(reference, out, "chunk " + std::to_string(chunked_options.max_prefill_chunk));
  // ceil(prompt / chunk) prefill steps (the last one yields the first token), then one step
  // per further token.
  const int64_t chunk = chunked_options.max_prefill_chunk;
  EXPECT_EQ(chunked->Stats().steps, (prompt_len + chunk - 1) / chunk + max_tokens - 1);
}

INSTANTIATE_TEST_SUITE_P(AllKvMethods, ChunkedPrefill, ::testing::Values("fp16", "kivi", "squat", "squat-post"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(Cancellation, FreesPagesWithinOneStep) {
  auto engine = MakeEngine(EngineOptions{});
  ASSERT_TRUE(engine);
  std::mt19937 rng(std::random_device{}());

  // Alone: the cancelled sequence's pages are back by the time its final event arrives, at
  // most one step after Cancel (the step already running when Cancel came).
  auto solo = engine->Submit(RandomGreedy(rng, 100, 500, "squat"));
  ASSERT_TRUE(solo.ok()) << solo.status();
  GenerationEvent first;
  ASSERT_TRUE((*solo)->Next(&first, 60s));
  ASSERT_GT(engine->PoolUsage().used_pages, 0);
  (*solo)->Cancel();
  const int64_t steps_at_cancel = engine->Stats().steps;
  const Outcome rest = DrainStream(**solo);
  EXPECT_EQ(rest.last.finish_reason, FinishReason::kCancelled);
  EXPECT_LE(engine->Stats().steps, steps_at_cancel + 1);
  EXPECT_EQ(engine->PoolUsage().used_pages, 0);  // no WaitIdle: freed before the final event

  // Beside a running request: the cancelled one's pages (a long fp16 prompt) leave while the
  // other keeps running.
  auto keeper = engine->Submit(RandomGreedy(rng, 10, 500, "fp16"));
  auto big = engine->Submit(RandomGreedy(rng, 400, 500, "fp16"));
  ASSERT_TRUE(keeper.ok() && big.ok());
  ASSERT_TRUE((*keeper)->Next(&first, 60s));
  ASSERT_TRUE((*big)->Next(&first, 60s));
  const int64_t page_bytes = engine->PoolUsage().page_bytes;
  const int64_t used_both = engine->PoolUsage().used_pages;
  (*big)->Cancel();
  EXPECT_EQ(DrainStream(**big).last.finish_reason, FinishReason::kCancelled);
  const int64_t used_after = engine->PoolUsage().used_pages;
  // 400 fp16 tokens (float32 on CPU): 2 layers * 2 KV heads * 64 * 2 (K, V) * 4 bytes each.
  const int64_t big_pages = 400 * 2 * 2 * 64 * 2 * 4 / page_bytes;
  EXPECT_LE(used_after, used_both - big_pages + 1);  // +1: the keeper may have grown a page
  EXPECT_GT(used_after, 0);
  (*keeper)->Cancel();
  EXPECT_EQ(DrainStream(**keeper).last.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(engine->PoolUsage().used_pages, 0);
}

TEST(RandomWorkload, PoolReturnsToZero) {
  EngineOptions options;
  options.kv_pool_bytes = 3 << 20;  // tight: some requests are preempted
  options.max_prefill_chunk = 48;   // long prompts take several steps
  options.max_num_batched_tokens = 160;
  options.max_num_seqs = 6;
  options.max_waiting = 64;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  std::mt19937 rng(std::random_device{}());
  const char* methods[] = {"fp16", "kivi", "squat", "squat-post"};
  struct Live {
    std::shared_ptr<RequestStream> stream;
    int cancel_after = -1;  // events before cancelling; -1: never
    int max_tokens = 0;
  };
  std::vector<Live> live;
  for (int i = 0; i < 40; ++i) {
    GenerateRequest r = RandomGreedy(rng, 1 + static_cast<int>(rng() % 150), 1 + static_cast<int>(rng() % 60),
                                     methods[rng() % 4]);
    if (r.kv_method != "fp16") r.k_bits = r.v_bits = (rng() % 2) ? 2 : 4;
    if (rng() % 2) {
      r.sampling.temperature = 1.0f;
      r.sampling.top_k = 50;
    }
    auto s = engine->Submit(r);
    ASSERT_TRUE(s.ok()) << s.status();
    Live l{*s, -1, r.sampling.max_tokens};
    if (rng() % 4 == 0) l.cancel_after = static_cast<int>(rng() % 10);
    if (l.cancel_after == 0) l.stream->Cancel();
    live.push_back(l);
  }
  int64_t most_running = 0;
  int cancelled = 0;
  for (Live& l : live) {
    int events = 0;
    GenerationEvent event;
    while (true) {
      ASSERT_TRUE(l.stream->Next(&event, 120s)) << "no event for 120 s";
      most_running = std::max(most_running, engine->Stats().running);
      if (++events == l.cancel_after) l.stream->Cancel();
      if (event.finished) break;
    }
    EXPECT_NE(event.finish_reason, FinishReason::kError) << event.error_message;
    if (event.finish_reason == FinishReason::kCancelled) {
      ++cancelled;
    } else {
      EXPECT_EQ(event.finish_reason, FinishReason::kLength);
      EXPECT_EQ(event.completion_tokens, l.max_tokens);
    }
  }
  EXPECT_LE(most_running, options.max_num_seqs);
  EXPECT_TRUE(engine->WaitIdle(30s));
  EXPECT_EQ(engine->PoolUsage().used_pages, 0);
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
  RecordProperty("preemptions", std::to_string(stats.preemptions));
  RecordProperty("cancelled", std::to_string(cancelled));
}

TEST(Admission, RequestThatCouldNeverFitIsRejected) {
  EngineOptions options;
  options.kv_format = "fp16";
  options.kv_pool_bytes = 1 << 20;  // 512 float32 fp16-format tokens of the tiny model
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  std::mt19937 rng(std::random_device{}());
  auto s = engine->Submit(RandomGreedy(rng, 600, 4, "fp16"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.status().message()).find("KV pool"), std::string::npos) << s.status();
  // A quantized format holds far more tokens, but its prompt is staged in full precision first.
  auto quantized = engine->Submit(RandomGreedy(rng, 600, 4, "kivi"));
  ASSERT_FALSE(quantized.ok());
  EXPECT_EQ(quantized.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(quantized.status().message()).find("can take a prompt of at most"), std::string::npos)
      << quantized.status();
  // Below both limits: accepted and completed.
  auto fits = engine->Submit(RandomGreedy(rng, 300, 4, "kivi"));
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(DrainStream(**fits).last.finish_reason, FinishReason::kLength);
}

// Submit's prompt limit is exact: the longest accepted prompt of each quantized method runs to
// completion (never an error event at admission), one token more is INVALID_ARGUMENT.
TEST(Admission, LongestAcceptedPromptRuns) {
  EngineOptions options;
  options.kv_pool_bytes = 1 << 20;
  auto engine = MakeEngine(options);
  ASSERT_TRUE(engine);
  std::mt19937 rng(std::random_device{}());
  for (const std::string method : {"kivi", "squat", "squat-post"}) {
    SCOPED_TRACE(method);
    auto accepted = [&](int len) {
      auto s = engine->Submit(RandomGreedy(rng, len, 1, method));
      if (!s.ok()) {
        EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
        return false;
      }
      (*s)->Cancel();
      DrainStream(**s);
      return true;
    };
    int lo = 1, hi = 2047;  // the tiny model's context is 2048
    ASSERT_TRUE(accepted(lo));
    while (lo < hi) {
      const int mid = lo + (hi - lo + 1) / 2;
      if (accepted(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    ASSERT_LT(lo, 2047) << "the pool, not the context, must be the limit here";
    EXPECT_FALSE(accepted(lo + 1));
    auto longest = engine->Submit(RandomGreedy(rng, lo, 2, method));
    ASSERT_TRUE(longest.ok()) << longest.status();
    Outcome out = DrainStream(**longest);
    EXPECT_EQ(out.last.finish_reason, FinishReason::kLength) << out.last.error_message;
    EXPECT_EQ(out.ids.size(), 2u);
  }
}

}  // namespace
}  // namespace squat
