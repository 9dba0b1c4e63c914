// Engine behaviour on the tiny random checkpoint: validation, determinism, stop conditions,
// cancellation, admission and draining.
#include "runtime/engine/engine.h"

#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>

#include "runtime/sampling/stop_matcher.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/engine_test_support.h"

namespace squat {
namespace {

using namespace std::chrono_literals;

using Outcome = testing_support::DrainedStream;
using testing_support::DrainStream;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EngineOptions options;
    options.model_dir = SQUAT_TINY_MODEL_DIR;
    options.max_tokens_limit = 512;
    options.max_model_len = 256;
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value().release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }

  static Outcome Run(GenerateRequest request) {
    auto stream = engine_->Submit(std::move(request));
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return {};
    return DrainStream(**stream);
  }

  static GenerateRequest Greedy(const std::string& prompt, int max_tokens) {
    GenerateRequest r;
    r.prompt = prompt;
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    return r;
  }

  static Engine* engine_;
};
Engine* EngineTest::engine_ = nullptr;

TEST_F(EngineTest, GreedyIsDeterministicAndHonoursMaxTokens) {
  std::mt19937 rng(std::random_device{}());
  const std::string prompt = "The year " + std::to_string(rng() % 10000) + " was";
  Outcome a = Run(Greedy(prompt, 12));
  Outcome b = Run(Greedy(prompt, 12));
  EXPECT_EQ(a.ids.size(), 12u);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(a.last.completion_tokens, 12);
  auto prompt_ids = engine_->Tokenize(prompt, true);
  ASSERT_TRUE(prompt_ids.ok());
  EXPECT_EQ(a.last.prompt_tokens, static_cast<int32_t>(prompt_ids->size()));
  EXPECT_GE(a.last.timings.total_seconds, a.last.timings.time_to_first_token_seconds);
  EXPECT_GT(a.last.timings.time_to_first_token_seconds, 0);
}

TEST_F(EngineTest, TokenIdPromptEqualsTextPrompt) {
  const std::string prompt = "a b c d e f";
  auto ids = engine_->Tokenize(prompt, true);
  ASSERT_TRUE(ids.ok());
  GenerateRequest by_ids = Greedy("", 6);
  by_ids.prompt_token_ids = *ids;
  EXPECT_EQ(Run(Greedy(prompt, 6)).ids, Run(by_ids).ids);
}

TEST_F(EngineTest, SeededSamplingIsReproducible) {
  const uint64_t seed = std::random_device{}();
  auto make = [&](uint64_t s) {
    GenerateRequest r;
    r.prompt = "Once upon a time";
    r.sampling.temperature = 1.5f;
    r.sampling.max_tokens = 24;
    r.sampling.ignore_eos = true;
    r.sampling.has_seed = true;
    r.sampling.seed = s;
    r.sampling.logprobs = 1;
    return r;
  };
  Outcome a = Run(make(seed));
  Outcome b = Run(make(seed));
  Outcome c = Run(make(seed + 1));
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.logprobs, b.logprobs);
  EXPECT_EQ(a.logprobs.size(), a.ids.size());
  // 24 draws at temperature 1.5 over a 512-token vocabulary: identical sequences from two
  // seeds would mean the seed is ignored.
  EXPECT_NE(a.ids, c.ids);
  for (float lp : a.logprobs) EXPECT_LE(lp, 0.0f);
}

TEST_F(EngineTest, StreamedTextEqualsDecodeOfIds) {
  GenerateRequest r = Greedy("Stream me some text", 20);
  r.sampling.temperature = 1.0f;  // sampled tokens exercise more of the vocabulary
  r.sampling.has_seed = true;
  r.sampling.seed = std::random_device{}();
  Outcome out = Run(r);
  auto tokenizer = Tokenizer::FromFile(std::string(SQUAT_TINY_MODEL_DIR) + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(out.ids.size(), 20u);
  EXPECT_GT(out.events.size(), 20u);  // one event per token plus the final one
  EXPECT_EQ(out.text, (*tokenizer)->Decode(out.ids));
}

TEST_F(EngineTest, StopStringTruncatesOutput) {
  Outcome free_run = Run(Greedy("Lorem ipsum dolor", 24));
  ASSERT_GE(free_run.text.size(), 6u);
  // Choose a stop string from the middle of the free-running output.
  const size_t at = free_run.text.size() / 2;
  const std::string stop = free_run.text.substr(at, 2);
  const size_t first = free_run.text.find(stop);
  GenerateRequest r = Greedy("Lorem ipsum dolor", 24);
  r.sampling.stop = {stop};
  Outcome stopped = Run(r);
  EXPECT_EQ(stopped.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped.text, free_run.text.substr(0, first));
}

TEST_F(EngineTest, StopTokenIdEndsGeneration) {
  Outcome free_run = Run(Greedy("Numbers: 1 2 3", 10));
  ASSERT_EQ(free_run.ids.size(), 10u);
  const int32_t stop_id = free_run.ids[5];
  GenerateRequest r = Greedy("Numbers: 1 2 3", 10);
  r.sampling.stop_token_ids = {stop_id};
  Outcome stopped = Run(r);
  EXPECT_EQ(stopped.last.finish_reason, FinishReason::kStop);
  const size_t first = std::find(free_run.ids.begin(), free_run.ids.end(), stop_id) - free_run.ids.begin();
  EXPECT_EQ(stopped.ids, std::vector<int32_t>(free_run.ids.begin(), free_run.ids.begin() + first));
}

TEST_F(EngineTest, EosEndsGenerationUnlessIgnored) {
  auto info = engine_->Describe();
  ASSERT_FALSE(info.eos_token_ids.empty());
  Outcome free_run = Run(Greedy("End here", 10));
  // Pretend the 4th greedy token were EOS by asking for it as a stop id is covered above; here
  // check that a stream never contains an EOS id when ignore_eos is false.
  GenerateRequest r = Greedy("End here", 40);
  r.sampling.ignore_eos = false;
  Outcome out = Run(r);
  for (int32_t id : out.ids) {
    EXPECT_EQ(std::count(info.eos_token_ids.begin(), info.eos_token_ids.end(), id), 0);
  }
  EXPECT_TRUE(out.last.finish_reason == FinishReason::kEos || out.last.finish_reason == FinishReason::kLength);
  EXPECT_EQ(free_run.ids.size(), 10u);
}

TEST_F(EngineTest, CancelEndsRequestWithCancelled) {
  GenerateRequest r = Greedy("cancel me", 500);
  auto stream = engine_->Submit(r);
  ASSERT_TRUE(stream.ok());
  GenerationEvent first;
  ASSERT_TRUE((*stream)->Next(&first, 60s));
  (*stream)->Cancel();
  Outcome rest = DrainStream(**stream);
  EXPECT_EQ(rest.last.finish_reason, FinishReason::kCancelled);
  EXPECT_LT(rest.last.completion_tokens, 500);
  // The engine is free again.
  EXPECT_EQ(Run(Greedy("after cancel", 3)).ids.size(), 3u);
}

TEST_F(EngineTest, RejectsBadInputWithClearMessages) {
  auto expect_invalid = [](GenerateRequest r, const std::string& needle) {
    auto s = engine_->Submit(std::move(r));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.status().message()).find(needle), std::string::npos) << s.status();
  };
  expect_invalid(Greedy("", 4), "prompt is empty");
  expect_invalid(Greedy("x", 513), "exceeds the server limit of 512");
  GenerateRequest bad_kv = Greedy("x", 4);
  bad_kv.kv_method = "zip";
  expect_invalid(bad_kv, "zip");
  GenerateRequest bad_ids = Greedy("", 4);
  bad_ids.prompt_token_ids = {1, 2, 100000};
  expect_invalid(bad_ids, "outside the vocabulary");
  GenerateRequest too_long = Greedy("", 4);
  too_long.prompt_token_ids.assign(300, 5);
  expect_invalid(too_long, "the limit is 255");
  GenerateRequest bad_temp = Greedy("x", 4);
  bad_temp.sampling.temperature = -1;
  expect_invalid(bad_temp, "temperature");
}

TEST_F(EngineTest, DescribeMatchesConfig) {
  auto d = engine_->Describe();
  EXPECT_EQ(d.vocab_size, 512);
  EXPECT_EQ(d.num_layers, 2);
  EXPECT_EQ(d.num_attention_heads, 4);
  EXPECT_EQ(d.num_key_value_heads, 2);
  EXPECT_EQ(d.head_dim, 64);
  EXPECT_EQ(d.max_model_len, 256);
  EXPECT_EQ(d.dtype, "float32");
  EXPECT_EQ(d.device, "cpu");
  EXPECT_GT(d.weight_bytes, 0);
  // Per layer and KV head, d = 64 channels; float32 full precision on CPU; quantized formats
  // hold b bits per element plus an fp16 scale and min per G = 32 elements, for K and V.
  const double elems = 2.0 * 2 * 64;  // layers * kv heads * d
  int defaults = 0;
  for (const auto& f : d.kv_formats) {
    SCOPED_TRACE(f.method + " K" + std::to_string(f.k_bits) + "V" + std::to_string(f.v_bits));
    if (f.method == "fp16") {
      EXPECT_DOUBLE_EQ(f.bytes_per_token, elems * 2 * 4);
    } else {
      EXPECT_DOUBLE_EQ(f.bytes_per_token, elems * (f.k_bits / 8.0 + 4.0 / 32 + f.v_bits / 8.0 + 4.0 / 32));
    }
    EXPECT_GT(f.capacity_tokens, 1000u);
    defaults += f.is_default;
    if (f.is_default) {
      EXPECT_EQ(f.method, "squat");
      EXPECT_EQ(f.k_bits, 2);
    }
  }
  EXPECT_EQ(defaults, 1);
  EXPECT_EQ(d.kv_formats.size(), 7u);  // fp16 + {kivi, squat, squat-post} x {2, 4} bits
}

TEST_F(EngineTest, PerRequestKvOverride) {
  GenerateRequest fp16 = Greedy("Compare formats please", 16);
  fp16.kv_method = "fp16";
  GenerateRequest squat4 = Greedy("Compare formats please", 16);
  squat4.kv_method = "squat";
  squat4.k_bits = squat4.v_bits = 4;
  squat4.sampling.logprobs = 1;
  fp16.sampling.logprobs = 1;
  Outcome a = Run(fp16), b = Run(squat4);
  ASSERT_EQ(a.logprobs.size(), 16u);
  ASSERT_EQ(b.logprobs.size(), 16u);
  EXPECT_EQ(a.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(b.last.finish_reason, FinishReason::kLength);
  GenerateRequest bad_bits = Greedy("x", 4);
  bad_bits.kv_method = "kivi";
  bad_bits.k_bits = 3;
  auto s = engine_->Submit(bad_bits);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  GenerateRequest fp16_bits = Greedy("x", 4);
  fp16_bits.kv_method = "fp16";
  fp16_bits.k_bits = 4;
  EXPECT_EQ(engine_->Submit(fp16_bits).status().code(), absl::StatusCode::kInvalidArgument);
}

// The stream says what the engine decided, so that no consumer re-derives its defaults.
TEST_F(EngineTest, StreamCarriesTheResolvedRequest) {
  GenerateRequest plain = Greedy("Defaults please", 0);  // max_tokens 0: default_max_tokens
  auto stream = engine_->Submit(plain);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const AcceptedRequest& accepted = (*stream)->accepted();
  EXPECT_EQ(accepted.max_tokens, EngineOptions().default_max_tokens);
  EXPECT_EQ(accepted.kv_method, "squat");
  EXPECT_EQ(accepted.kv_format, "squat-k2v2");
  ASSERT_EQ(accepted.request_id.size(), 20u);  // "req-" and 16 hex digits
  EXPECT_EQ(accepted.request_id.substr(0, 4), "req-");
  EXPECT_EQ(accepted.request_id.find_first_not_of("0123456789abcdef", 4), std::string::npos);
  (*stream)->Cancel();
  DrainStream(**stream);

  GenerateRequest named = Greedy("Override please", 3);
  named.request_id = "mine-1";
  named.kv_method = "squat_post";  // an alias: the stream names the canonical method
  named.v_bits = 4;
  stream = engine_->Submit(named);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->accepted().request_id, "mine-1");
  EXPECT_EQ((*stream)->accepted().kv_method, "squat-post");
  EXPECT_EQ((*stream)->accepted().kv_format, "squat-post-k2v4");
  EXPECT_EQ((*stream)->accepted().max_tokens, 3);
  EXPECT_EQ(DrainStream(**stream).ids.size(), 3u);
}

TEST(EngineOptionsTest, ValidationNamesTheOptionAndItsFlag) {
  struct Case {
    std::function<void(EngineOptions&)> spoil;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](EngineOptions& o) { o.max_num_seqs = 0; }, "max_num_seqs (--max-num-seqs)"},
      {[](EngineOptions& o) { o.max_waiting = -3; }, "max_waiting (--max-waiting)"},
      {[](EngineOptions& o) { o.default_max_tokens = o.max_tokens_limit + 1; }, "default_max_tokens"},
      {[](EngineOptions& o) { o.gpu_memory_utilization = 1.5; }, "--gpu-memory-utilization"},
      {[](EngineOptions& o) { o.kv_pool_bytes = -1; }, "--kv-pool-mib"},
      {[](EngineOptions& o) { o.max_model_len = -1; }, "max_model_len"},
      {[](EngineOptions& o) { o.model_dir.clear(); }, "--model"},
  };
  EngineOptions good;
  good.model_dir = SQUAT_TINY_MODEL_DIR;
  EXPECT_TRUE(ValidateEngineOptions(good).ok());
  for (const Case& c : cases) {
    EngineOptions options = good;
    c.spoil(options);
    const absl::Status status = ValidateEngineOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.needle;
    EXPECT_NE(std::string(status.message()).find(c.needle), std::string::npos) << status;
    // Engine::Create refuses the same options before it loads anything.
    EXPECT_EQ(Engine::Create(options).status(), status);
  }
}

TEST(EnginePool, EveryPageReturnsAfterMixedRequests) {
  EngineOptions options;
  options.model_dir = SQUAT_TINY_MODEL_DIR;
  options.max_model_len = 512;
  options.kv_pool_bytes = 8 << 20;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const KvPoolUsage empty = (*engine)->PoolUsage();
  ASSERT_GT(empty.total_pages, 0);
  ASSERT_EQ(empty.used_pages, 0);
  std::mt19937 rng(std::random_device{}());
  const char* methods[] = {"fp16", "kivi", "squat", "squat-post"};
  std::vector<std::shared_ptr<RequestStream>> streams;
  int cancelled = 0;
  for (int i = 0; i < 40; ++i) {
    GenerateRequest r;
    r.prompt = std::string(1 + rng() % 60, static_cast<char>('a' + rng() % 26)) + " and more";
    r.sampling.max_tokens = 1 + rng() % 70;
    r.sampling.temperature = (rng() % 2) ? 0.0f : 1.0f;
    r.sampling.ignore_eos = true;
    r.kv_method = methods[rng() % 4];
    if (r.kv_method != "fp16") r.k_bits = r.v_bits = (rng() % 2) ? 2 : 4;
    auto s = (*engine)->Submit(r);
    ASSERT_TRUE(s.ok()) << s.status();
    if (rng() % 4 == 0) {
      (*s)->Cancel();
      ++cancelled;
    }
    streams.push_back(*s);
  }
  int finished = 0;
  for (auto& s : streams) {
    Outcome out = DrainStream(*s);
    EXPECT_NE(out.last.finish_reason, FinishReason::kError) << out.last.error_message;
    ++finished;
  }
  EXPECT_EQ(finished, 40);
  EXPECT_TRUE((*engine)->WaitIdle(60s));
  EXPECT_EQ((*engine)->PoolUsage().used_pages, 0);

  // While a request runs its pages are in use.
  GenerateRequest long_req;
  long_req.prompt = "hold the pages";
  long_req.sampling.max_tokens = 400;
  long_req.sampling.ignore_eos = true;
  auto s = (*engine)->Submit(long_req);
  ASSERT_TRUE(s.ok());
  GenerationEvent first;
  ASSERT_TRUE((*s)->Next(&first, 60s));
  EXPECT_GT((*engine)->PoolUsage().used_pages, 0);
  (*s)->Cancel();
  EXPECT_EQ(DrainStream(**s).last.finish_reason, FinishReason::kCancelled);
  EXPECT_TRUE((*engine)->WaitIdle(60s));
  EXPECT_EQ((*engine)->PoolUsage().used_pages, 0);
}

TEST(EnginePool, LambdaZeroSquatPostEqualsKivi) {
  EngineOptions options;
  options.model_dir = SQUAT_TINY_MODEL_DIR;
  options.kv_lambda = 0.0;
  options.kv_format = "kivi";
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::mt19937 rng(std::random_device{}());
  GenerateRequest r;
  r.prompt = "The " + std::to_string(rng()) + " tokens of a prompt long enough to quantize some keys";
  r.sampling.temperature = 0;
  r.sampling.max_tokens = 40;
  r.sampling.ignore_eos = true;
  r.sampling.logprobs = 1;
  // One after the other: each alone, so that batching cannot round them differently.
  auto kivi = (*engine)->Submit(r);
  ASSERT_TRUE(kivi.ok()) << kivi.status();
  Outcome a = DrainStream(**kivi);
  r.kv_method = "squat-post";
  auto squat = (*engine)->Submit(r);
  ASSERT_TRUE(squat.ok()) << squat.status();
  Outcome b = DrainStream(**squat);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.logprobs, b.logprobs);  // bit for bit
  (*engine)->Shutdown();
}

TEST(EngineAdmission, QueueBoundAndDrain) {
  EngineOptions options;
  options.model_dir = SQUAT_TINY_MODEL_DIR;
  options.max_waiting = 1;
  options.max_num_seqs = 1;  // the first request runs alone, so the second one waits
  options.max_tokens_limit = 4000;
  options.max_model_len = 2048;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerateRequest long_req;
  long_req.prompt = "long";
  long_req.sampling.temperature = 0;
  long_req.sampling.ignore_eos = true;
  long_req.sampling.max_tokens = 2000;
  std::vector<std::shared_ptr<RequestStream>> accepted;
  int rejected = 0;
  for (int i = 0; i < 3; ++i) {
    auto s = (*engine)->Submit(long_req);
    if (s.ok()) {
      accepted.push_back(*s);
    } else {
      EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
      ++rejected;
    }
  }
  // One request can run and one can wait; the third finds the queue full whichever way the
  // engine thread raced.
  EXPECT_GE(rejected, 1);
  (*engine)->StopAccepting();
  auto after = (*engine)->Submit(long_req);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  for (auto& s : accepted) s->Cancel();
  EXPECT_TRUE((*engine)->WaitIdle(60s));
  for (auto& s : accepted) EXPECT_EQ(DrainStream(*s).last.finish_reason, FinishReason::kCancelled);
  (*engine)->Shutdown();
}

TEST(StopMatcher, HoldsBackPossiblePrefixesOnly) {
  StopMatcher m({"STOP", "xyz"});
  EXPECT_EQ(m.Append("abc ST"), "abc ");
  EXPECT_EQ(m.Append("O"), "");
  EXPECT_EQ(m.Append("x"), "STO");  // "STOx" can no longer become STOP; "x" may start xyz
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.Append("y"), "");
  EXPECT_EQ(m.Append("z tail"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, RandomSplitsGiveSameResultAsWholeText) {
  std::mt19937 rng(std::random_device{}());
  const std::string alphabet = "abcAB ";
  for (int trial = 0; trial < 500; ++trial) {
    std::string text;
    const int n = 1 + rng() % 40;
    for (int i = 0; i < n; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    for (int s = 0; s < 2; ++s) {
      std::string stop;
      const int len = 1 + rng() % 3;
      for (int i = 0; i < len; ++i) stop += alphabet[rng() % alphabet.size()];
      stops.push_back(stop);
    }
    // Reference: scan prefixes; at the first end position where some stop string completes,
    // cut before the earliest-starting one that ends there.
    size_t first = std::string::npos;
    for (size_t end = 1; end <= text.size() && first == std::string::npos; ++end) {
      for (const auto& s : stops) {
        if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0) {
          first = std::min(first, end - s.size());
        }
      }
    }
    const std::string expected = first == std::string::npos ? text : text.substr(0, first);

    StopMatcher m(stops);
    std::string out;
    size_t pos = 0;
    while (pos < text.size() && !m.stopped()) {
      const size_t len = 1 + rng() % 4;
      out += m.Append(text.substr(pos, len));
      pos += len;
    }
    out += m.Flush();
    EXPECT_EQ(out, expected) << "text '" << text << "' stops '" << stops[0] << "', '" << stops[1] << "'";
    EXPECT_EQ(m.stopped(), first != std::string::npos);
  }
}

}  // namespace
}  // namespace squat
