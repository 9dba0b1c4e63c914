// squat-eval's harness (tools/eval/) on a small random checkpoint: its fp16 perplexity equals
// exp(mean NLL) from the model's full-sequence logits taken in float64; the fp16 format has
// no error against itself; quantized formats have some, less at 4 bits than at 2; the shared
// prefill gives every format the logits its own run would; windows split as documented; the
// needle test and the options parser behave.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kvcache/standalone_cache.h"
#include "runtime/model/llama_model.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/model_test_support.h"
#include "tools/eval/eval_options.h"
#include "tools/eval/format_run.h"
#include "tools/eval/formats.h"
#include "tools/eval/needle.h"
#include "tools/eval/perplexity.h"
#include "tools/eval/windows.h"

namespace squat::eval {
namespace {

constexpr int64_t kBos = 510;  // the generator's tokenizer: bos 510, eos 511

class EvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    // Weights of std 0.1 (kInitStdFlag) spread the logits, so that the formats differ visibly.
    dir_ = new std::string(Generate(*tmp_, "tiny", "--preset tiny --seed 23"));
    auto loaded = LoadFrom(*dir_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    loaded_ = new Loaded(std::move(*loaded));
  }
  static void TearDownTestSuite() {
    delete loaded_;
    delete dir_;
    delete tmp_;
  }
  static LlamaModel& model() { return *loaded_->model; }

  static std::vector<EvalFormat> Formats(const std::vector<std::string>& methods, const std::vector<int>& bits) {
    EvalOptions o;
    o.methods = methods;
    o.bits = bits;
    auto formats = BuildFormats(o, model().config().head_dim);
    EXPECT_TRUE(formats.ok()) << formats.status();
    return *formats;
  }

  // Random text tokens (no special ids).
  static std::vector<int64_t> Text(int64_t count, uint32_t seed) { return RandomTokens(kBos, count, seed); }

  static TempDir* tmp_;
  static std::string* dir_;
  static Loaded* loaded_;
};
TempDir* EvalTest::tmp_ = nullptr;
std::string* EvalTest::dir_ = nullptr;
Loaded* EvalTest::loaded_ = nullptr;

TEST(WindowPlanTest, NonOverlappingWindowsSpreadEvenly) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t context = std::uniform_int_distribution<int64_t>(8, 600)(rng);
    const int64_t bos = trial % 2;
    const int64_t text = std::uniform_int_distribution<int64_t>(0, 20000)(rng);
    const int64_t max_windows = std::uniform_int_distribution<int64_t>(0, 12)(rng);
    const double fraction = std::uniform_real_distribution<double>(0.05, 0.95)(rng);
    const WindowPlan plan = PlanWindows(text, context, bos, fraction, max_windows);
    SCOPED_TRACE(testing::Message() << "text " << text << " context " << context << " bos " << bos << " max "
                                    << max_windows << " fraction " << fraction);
    EXPECT_EQ(plan.text_tokens, context - bos);
    EXPECT_EQ(plan.available, text / (context - bos));
    EXPECT_EQ(static_cast<int64_t>(plan.starts.size()),
              max_windows == 0 ? plan.available : std::min(max_windows, plan.available));
    EXPECT_GE(plan.prefix, 1);
    EXPECT_LE(plan.prefix, context - 2);
    EXPECT_EQ(plan.prefix, std::clamp<int64_t>(std::llround(fraction * context), 1, context - 2));
    EXPECT_EQ(plan.scored, context - plan.prefix - 1);
    for (size_t i = 0; i < plan.starts.size(); ++i) {
      EXPECT_EQ(plan.starts[i] % plan.text_tokens, 0);  // whole-window boundaries
      EXPECT_LE(plan.starts[i] + plan.text_tokens, text);
      if (i > 0) {
        EXPECT_GE(plan.starts[i] - plan.starts[i - 1], plan.text_tokens);  // no overlap
      }
    }
    // Evenly spread: the chosen windows' indices are floor(i * available / n).
    const int64_t n = static_cast<int64_t>(plan.starts.size());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(plan.starts[i] / plan.text_tokens, i * plan.available / n);
  }
}

TEST(WindowPlanTest, AllWindowsWhenUnlimited) {
  const WindowPlan plan = PlanWindows(1000, 100, 1, 0.5, 0);
  ASSERT_EQ(plan.starts.size(), 10u);  // 1000 / 99
  for (size_t i = 0; i < plan.starts.size(); ++i) EXPECT_EQ(plan.starts[i], static_cast<int64_t>(i) * 99);
  EXPECT_EQ(plan.prefix, 50);
  EXPECT_EQ(plan.scored, 49);
  EXPECT_TRUE(PlanWindows(98, 100, 1, 0.5, 0).starts.empty());  // the text holds no whole window
}

TEST_F(EvalTest, Fp16PerplexityEqualsFullSequenceLogitsInFloat64) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  PerplexityInputs inputs;
  inputs.text_tokens = Text(700, seed);
  inputs.bos = {kBos};
  inputs.formats = Formats({"fp16"}, {2});
  const WindowPlan plan = PlanWindows(inputs.text_tokens.size(), 96, 1, 0.5, 3);
  ASSERT_EQ(plan.starts.size(), 3u);
  auto result = EvaluatePerplexity(model(), inputs, plan, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();

  // Independently: one full forward per window, log-softmax of its logits in float64.
  double nll = 0;
  int64_t count = 0;
  for (int64_t start : plan.starts) {
    std::vector<int64_t> window = {kBos};
    window.insert(window.end(), inputs.text_tokens.begin() + start, inputs.text_tokens.begin() + start + 95);
    auto cache = NewCache(model(), window.size());
    const at::Tensor logp =
        at::log_softmax(Forward(model(), window, cache, /*last_only=*/false).to(at::kDouble), -1);
    for (int64_t t = plan.prefix; t + 1 < plan.context; ++t) {
      nll -= logp[t][window[t + 1]].item<double>();
      ++count;
    }
  }
  const FormatScores& fp16 = result->formats[0];
  EXPECT_EQ(fp16.tokens, count);
  EXPECT_EQ(count, 3 * (96 - 48 - 1));
  EXPECT_NEAR(fp16.perplexity() / std::exp(nll / count), 1.0, 1e-5);
  EXPECT_GT(fp16.perplexity(), 1.0);
}

TEST_F(EvalTest, ErrorsAreZeroForFp16AndShrinkWithMoreBits) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  PerplexityInputs inputs;
  inputs.text_tokens = Text(400, seed);
  inputs.bos = {kBos};
  inputs.formats = Formats({"fp16", "kivi", "squat", "squat-post"}, {2, 4});
  ASSERT_EQ(inputs.formats.size(), 7u);
  // Prefix 80: two R = 32 key blocks quantized at prefill, then flushes while decoding.
  const WindowPlan plan = PlanWindows(inputs.text_tokens.size(), 160, 1, 0.5, 2);
  auto result = EvaluatePerplexity(model(), inputs, plan, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  const int64_t layers = model().config().num_hidden_layers;
  const auto& f = result->formats;
  EXPECT_EQ(f[0].mean_abs_logit_error(), 0.0);
  EXPECT_EQ(f[0].max_abs_logit_error, 0.0);
  EXPECT_EQ(f[0].mean_kl(), 0.0);
  EXPECT_EQ(f[0].top1_agreement(), 1.0);
  EXPECT_EQ(f[0].mean_attention_rel_l2(), 0.0);
  ASSERT_EQ(static_cast<int64_t>(f[0].attention_rel_l2().size()), layers);
  for (const FormatScores& s : f) {
    EXPECT_EQ(s.tokens, 2 * plan.scored) << s.label;
    EXPECT_EQ(s.attention_steps, 2 * plan.scored) << s.label;
  }
  // Labels: fp16, kivi2, kivi4, squat2, squat4, squat-post2, squat-post4.
  for (size_t two = 1; two < f.size(); two += 2) {
    const FormatScores& low = f[two];
    const FormatScores& high = f[two + 1];
    SCOPED_TRACE(low.label + " vs " + high.label);
    EXPECT_EQ(low.k_bits, 2);
    EXPECT_EQ(high.k_bits, 4);
    EXPECT_GT(high.mean_abs_logit_error(), 0.0);
    EXPECT_GT(high.mean_kl(), 0.0);
    EXPECT_LT(high.mean_abs_logit_error(), low.mean_abs_logit_error());
    EXPECT_LT(high.mean_kl(), low.mean_kl());
    EXPECT_LT(high.max_abs_logit_error, low.max_abs_logit_error);
    for (int64_t layer = 0; layer < layers; ++layer) {
      EXPECT_GT(high.isolated_rel_l2()[layer], 0.0);
      EXPECT_LT(high.isolated_rel_l2()[layer], low.isolated_rel_l2()[layer]) << "layer " << layer;
      EXPECT_GT(high.attention_rel_l2()[layer], 0.0);
      EXPECT_LT(high.attention_rel_l2()[layer], low.attention_rel_l2()[layer]) << "layer " << layer;
    }
    EXPECT_LT(high.isolated_rel_l2()[0], 0.5);  // an error, not garbage
  }
  // The first layer's attention inputs are the same in every run, so its own-run and isolated
  // errors agree (up to the rounding of differently batched matmuls).
  for (size_t i = 1; i < f.size(); ++i) {
    EXPECT_NEAR(f[i].attention_rel_l2()[0], f[i].isolated_rel_l2()[0], 1e-4 * f[i].isolated_rel_l2()[0] + 1e-6)
        << f[i].label;
  }
}

// The shared prefill and batched decode give each format the logits of its own standalone run.
// Decode rows are rounded differently in a batch of formats than alone (float32 matmuls of
// another shape), and a key near a rounding boundary may then get the neighbouring code, so
// quantized formats are held to "far below their own error", fp16 to round-off.
TEST_F(EvalTest, SharedPrefillMatchesSeparateRuns) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::vector<EvalFormat> formats = Formats({"fp16", "kivi", "squat"}, {2});
  std::vector<int64_t> tokens = Text(120, seed);
  const int64_t prefix = 70;
  auto run = FormatRun::Create(model(), formats, tokens.size(), /*isolated_attention=*/true, /*query_gram=*/false);
  ASSERT_TRUE(run.ok()) << run.status();
  std::vector<at::Tensor> rows = {(*run)->Prefill(std::vector<int64_t>(tokens.begin(), tokens.begin() + prefix))};
  for (size_t t = prefix; t < tokens.size(); ++t) rows.push_back((*run)->Step(tokens[t]));
  std::vector<at::Tensor> separate;  // [steps, vocab] per format
  for (size_t f = 0; f < formats.size(); ++f) {
    auto cache = kv::StandaloneCache::Create(model().kv_shape(), formats[f].format, tokens.size());
    ASSERT_TRUE(cache.ok()) << cache.status();
    const at::Tensor first = Forward(model(), {tokens.begin(), tokens.begin() + prefix}, *cache);
    EXPECT_TRUE(at::equal(rows[0][0], first[0])) << formats[f].label << ": the prefill is the same forward pass";
    std::vector<at::Tensor> steps;
    for (size_t t = prefix; t < tokens.size(); ++t) steps.push_back(Forward(model(), {tokens[t]}, *cache)[0]);
    separate.push_back(at::stack(steps));
  }
  std::vector<at::Tensor> shared_steps(rows.begin() + 1, rows.end());
  const at::Tensor shared = at::stack(shared_steps);  // [steps, formats, vocab]
  EXPECT_LT((shared.select(1, 0) - separate[0]).abs().max().item<double>(), 1e-4) << "fp16";
  for (size_t f = 1; f < formats.size(); ++f) {
    const double own_error = (separate[f] - separate[0]).abs().mean().item<double>();
    const double harness_gap = (shared.select(1, f) - separate[f]).abs().mean().item<double>();
    EXPECT_GT(own_error, 0.0) << formats[f].label;
    EXPECT_LT(harness_gap, 0.05 * own_error) << formats[f].label;
  }
}

TEST_F(EvalTest, NeedleScoresEveryFormatAndFp16HasNoDelta) {
  auto tokenizer = Tokenizer::FromFile(*dir_ + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::mt19937 rng(std::random_device{}());
  const char* words[] = {"the", "land", "king", "said", "unto", "and", "water", "light", "house", "day"};
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += words[rng() % 10];
    text += (i % 9 == 8) ? ". " : " ";
  }
  NeedleInputs inputs;
  for (int32_t id : (*tokenizer)->Encode(text, false)) inputs.text_tokens.push_back(id);
  inputs.bos = {kBos};
  inputs.formats = Formats({"fp16", "kivi"}, {2, 4});
  inputs.contexts = {150};
  inputs.depths = {0.2, 0.8};
  inputs.trials = 2;
  inputs.seed = rng();
  auto result = RunNeedle(model(), **tokenizer, inputs, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->cells.size(), 2u);
  for (const NeedleCell& cell : result->cells) {
    EXPECT_EQ(cell.cases, 2);
    ASSERT_EQ(cell.formats.size(), 3u);
    EXPECT_EQ(cell.formats[0].abs_delta_logprob_sum, 0.0);
    EXPECT_LT(cell.control_logprob_sum, 0.0);
    for (const NeedleFormatScores& s : cell.formats) {
      EXPECT_EQ(s.cases, 2);
      EXPECT_LT(s.logprob_sum, 0.0);
      EXPECT_TRUE(std::isfinite(s.logprob_sum));
    }
    EXPECT_GT(cell.formats[1].abs_delta_logprob_sum, 0.0);  // 2-bit KIVI changes something
  }
}

TEST(EvalOptionsTest, ParsesListsAndRejectsBadInput) {
  const char* good[] = {"squat-eval", "--model", "m", "--text", "t", "--contexts", "128,256", "--bits", "4",
                        "--needle-contexts", "none", "--lambda", "0.01", "--no-isolated-attention",
                        "--max-windows", "3,0"};
  auto o = ParseEvalOptions(16, good);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->contexts, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(o->bits, (std::vector<int>{4}));
  EXPECT_TRUE(o->needle_contexts.empty());
  EXPECT_DOUBLE_EQ(o->lambda, 0.01);
  EXPECT_FALSE(o->isolated_attention);
  EXPECT_EQ(MaxWindowsFor(*o, 0), 3);
  EXPECT_EQ(MaxWindowsFor(*o, 1), 0);
  const char* one_limit[] = {"squat-eval", "--model", "m", "--text", "t", "--contexts", "64,96,128", "--max-windows", "5"};
  auto one = ParseEvalOptions(9, one_limit);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(MaxWindowsFor(*one, 2), 5);
  const char* limit_mismatch[] = {"squat-eval", "--model", "m", "--text", "t", "--contexts", "64,96,128",
                                  "--max-windows", "5,6"};
  EXPECT_FALSE(ParseEvalOptions(9, limit_mismatch).ok());
  const char* bad_bits[] = {"squat-eval", "--model", "m", "--text", "t", "--bits", "3"};
  EXPECT_FALSE(ParseEvalOptions(7, bad_bits).ok());
  const char* bad_list[] = {"squat-eval", "--model", "m", "--text", "t", "--contexts", "512,x"};
  EXPECT_FALSE(ParseEvalOptions(7, bad_list).ok());
  const char* missing[] = {"squat-eval", "--text", "t"};
  EXPECT_FALSE(ParseEvalOptions(3, missing).ok());
  const char* unknown[] = {"squat-eval", "--model", "m", "--text", "t", "--frobnicate", "1"};
  EXPECT_FALSE(ParseEvalOptions(7, unknown).ok());
  EvalOptions bad_method;
  bad_method.methods = {"fp16", "nope"};
  EXPECT_FALSE(BuildFormats(bad_method, 64).ok());
}

}  // namespace
}  // namespace squat::eval
