// Paged KV cache: formats, page sizing, pool accounting (reservation growth, prompt staging,
// reused subspaces), fp16 attention vs a float64 dense reference, decode equivalence of the
// quantized formats (T9), the residual-window state machine (T10) of squat-spec.md, chunked
// prefill vs one-shot prefill, and preempt-and-recompute with a reused SQuat subspace.
#include "kvcache/kv_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvcache/attention_backend.h"
#include "kvcache/device_eigh.h"
#include "kvcache/format_catalogue.h"
#include "kvcache/page_geometry.h"
#include "kvcache/page_pool.h"
#include "kvcache/query_gram.h"
#include "kvcache/quantized_sequence_cache.h"
#include "kvcache/rope.h"
#include "kvcache/squat_math.h"
#include "kvcache/squat_state.h"
#include "kvcache/step_batch.h"

namespace squat::kv {
namespace {

// Fresh randomness every run; the seed is printed on failure, and SQUAT_TEST_SEED replays it.
class SeededTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* replay = std::getenv("SQUAT_TEST_SEED");
    seed_ = replay ? std::strtoull(replay, nullptr, 10) : std::random_device{}();
    at::manual_seed(seed_);
    rng_.seed(static_cast<uint32_t>(seed_));
  }
  std::string SeedNote() const { return "seed " + std::to_string(seed_); }
  uint64_t seed_ = 0;
  std::mt19937 rng_;
};

// RoPE inverse frequencies of a head_dim (theta 10000), float32.
at::Tensor InvFreq(int64_t head_dim) {
  at::Tensor exponent = at::arange(0, head_dim, 2, at::kFloat) / static_cast<double>(head_dim);
  return at::pow(10000.0, exponent).reciprocal();
}

KvModelShape SmallShape(int64_t layers = 2, int64_t kv_heads = 2, int64_t n_rep = 2, int64_t head_dim = 64) {
  KvModelShape shape;
  shape.num_layers = layers;
  shape.num_kv_heads = kv_heads;
  shape.num_attention_heads = kv_heads * n_rep;
  shape.head_dim = head_dim;
  shape.compute_dtype = at::kFloat;
  shape.device = at::kCPU;
  shape.rope_table = BuildRopeTable(InvFreq(head_dim), 2048, at::kCPU);
  return shape;
}

KvFormat Quantized(KvMethod method, int bits_k, int bits_v, int64_t group, int64_t residual) {
  KvFormat f;
  f.method = method;
  f.k_bits = bits_k;
  f.v_bits = bits_v;
  f.group_size = group;
  f.residual_length = residual;
  f.block_size = 32;
  f.subspace_dim = 20;
  f.lambda = 1e-2;
  return f;
}

KvFormat Fp16() {
  KvFormat f;
  f.method = KvMethod::kFp16;
  return f;
}

// Independent byte counts: every tensor of the layout, summed.
int64_t CountFp16TokenBytes(const KvModelShape& s) {
  const int64_t per_tensor = s.num_kv_heads * s.head_dim * static_cast<int64_t>(sizeof(float));
  return s.num_layers * 2 * per_tensor;  // K and V of every layer
}
int64_t CountQuantizedBytes(const KvModelShape& s, const KvFormat& f, int64_t tokens) {
  const int64_t h = s.num_kv_heads, d = s.head_dim, g = f.group_size;
  const int64_t key_words = h * d * (tokens / (32 / f.k_bits)) * 4;
  const int64_t value_words = h * tokens * (d / (32 / f.v_bits)) * 4;
  const int64_t key_meta = 2 * h * d * (tokens / g) * 2;    // fp16 scale + min
  const int64_t value_meta = 2 * h * tokens * (d / g) * 2;  // fp16 scale + min
  return s.num_layers * (key_words + value_words + key_meta + value_meta);
}

std::unique_ptr<KvCacheManager> MakeManager(const KvModelShape& shape, const KvFormat& format, int64_t pages) {
  const int64_t page_bytes = DefaultPageBytes(shape, format);
  auto manager = KvCacheManager::Create(shape, format, page_bytes * pages);
  EXPECT_TRUE(manager.ok()) << manager.status();
  return manager.ok() ? *std::move(manager) : nullptr;
}

// ---- float64 references ----

// HF rotate-half RoPE; angles are the float32 products pos * inv_freq (as the model forms
// them), cos/sin and the rotation in float64.
at::Tensor Rope64(const at::Tensor& x, int64_t first_position) {
  const at::Tensor inv_freq = InvFreq(x.size(2));
  const int64_t n = x.size(1), half = x.size(2) / 2;
  at::Tensor positions = at::arange(first_position, first_position + n, at::kFloat);
  at::Tensor freqs = at::outer(positions, inv_freq).to(at::kDouble);
  at::Tensor angles = at::cat({freqs, freqs}, -1);
  at::Tensor xd = x.to(at::kDouble);
  at::Tensor rotated = at::cat({-xd.narrow(-1, half, half), xd.narrow(-1, 0, half)}, -1);
  return xd * angles.cos() + rotated * angles.sin();
}

// Queries [H_q, T, d] at positions [start, start + T) over keys/values [H_kv, start + T, d].
at::Tensor DenseAttention64(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t start) {
  const int64_t heads = q.size(0), tokens = q.size(1), d = q.size(2), n_rep = heads / keys.size(0);
  const int64_t total = keys.size(1);
  at::Tensor out = at::empty({heads, tokens, d}, at::kDouble);
  at::Tensor hidden = at::arange(total, at::kLong).unsqueeze(0) > at::arange(start, start + tokens, at::kLong).unsqueeze(1);
  for (int64_t j = 0; j < heads; ++j) {
    const int64_t h = j / n_rep;
    at::Tensor scores = q[j].to(at::kDouble).mm(keys[h].to(at::kDouble).t()) / std::sqrt(static_cast<double>(d));
    scores.masked_fill_(hidden, -std::numeric_limits<double>::infinity());
    out[j] = at::softmax(scores, -1).mm(values[h].to(at::kDouble));
  }
  return out;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Per-layer inputs of a whole run (prompt + decode tokens).
struct RunInputs {
  std::vector<at::Tensor> q_rot, k_pre, k_rot, v;  // [heads, total, d] per layer
};

RunInputs RandomInputs(const KvModelShape& s, int64_t total) {
  RunInputs in;
  for (int64_t l = 0; l < s.num_layers; ++l) {
    in.q_rot.push_back(at::randn({s.num_attention_heads, total, s.head_dim}));
    // A per-channel offset, as real keys have, so min-max groups are not centred at zero.
    at::Tensor k = at::randn({s.num_kv_heads, total, s.head_dim}) + 2.0 * at::randn({s.num_kv_heads, 1, s.head_dim});
    in.k_pre.push_back(k);
    in.k_rot.push_back(Rope64(k, 0).to(at::kFloat));
    in.v.push_back(at::randn({s.num_kv_heads, total, s.head_dim}));
  }
  return in;
}

// The same shape and inputs on another device.
KvModelShape OnDevice(KvModelShape shape, at::Device device) {
  shape.device = device;
  shape.rope_table = shape.rope_table.to(device);
  return shape;
}
RunInputs ToDevice(const RunInputs& in, at::Device device) {
  RunInputs out;
  for (size_t l = 0; l < in.q_rot.size(); ++l) {
    out.q_rot.push_back(in.q_rot[l].to(device));
    out.k_pre.push_back(in.k_pre[l].to(device));
    out.k_rot.push_back(in.k_rot[l].to(device));
    out.v.push_back(in.v[l].to(device));
  }
  return out;
}

// One step of one sequence, as the engine runs it: a StepBatch of that sequence, one attention
// call per layer through the manager's backend with positions [start, start + count) of the
// inputs, then the step's quantization and commit (prompt_complete = false: a prompt chunk
// with more to come). Returns each layer's output [H_q, count, d].
std::vector<at::Tensor> Step(KvCacheManager& manager, SequenceKvCache& cache, const RunInputs& in, int64_t start,
                             int64_t count, bool prompt_complete = true) {
  auto batch = StepBatch::Create(manager, StepCapacity{count, 1, manager.StepPageIds(1)});
  EXPECT_TRUE(batch.ok()) << batch.status();
  const std::vector<int32_t> tokens(count, 0);  // the backend never reads token ids
  (*batch)->Begin();
  (*batch)->Add(&cache, tokens.data(), count, prompt_complete, /*logits=*/false);
  (*batch)->Seal();
  AttentionBackend& backend = manager.backend();
  backend.BeginStep(**batch);
  std::vector<at::Tensor> outs;
  auto rows = [&](const at::Tensor& t) { return t.narrow(1, start, count).transpose(0, 1).contiguous(); };
  for (int64_t l = 0; l < static_cast<int64_t>(in.q_rot.size()); ++l) {
    const at::Tensor q = rows(in.q_rot[l]);
    const at::Tensor out = at::empty_like(q);
    backend.Attend(l, **batch, q, rows(in.k_pre[l]), rows(in.k_rot[l]), rows(in.v[l]), out);
    outs.push_back(out.transpose(0, 1));
  }
  (*batch)->Finish(backend);
  return outs;
}

// The query Gram of spec 4.1 as the cache defines its sum (kv-cache.md): per KV head, the Grams
// of fixed blocks of kGramBlockTokens positions (float64 M^T M of the group's stacked rows),
// added in position order.
at::Tensor BlockwiseGram(const at::Tensor& q_rot, int64_t kv_head, int64_t n_rep, int64_t tokens) {
  at::Tensor gram;
  for (int64_t b = 0; b < tokens; b += kGramBlockTokens) {
    const int64_t n = std::min(kGramBlockTokens, tokens - b);
    const at::Tensor rows = q_rot.narrow(0, kv_head * n_rep, n_rep).narrow(1, b, n).reshape({-1, q_rot.size(2)});
    const at::Tensor block = QueryGram(rows);
    gram = gram.defined() ? gram + block : block;
  }
  return gram;
}

// ---- formats ----

TEST(KvFormatTest, ParsesMethodNames) {
  EXPECT_EQ(*ParseKvMethod("fp16"), KvMethod::kFp16);
  EXPECT_EQ(*ParseKvMethod("kivi"), KvMethod::kKivi);
  EXPECT_EQ(*ParseKvMethod("squat"), KvMethod::kSquatPre);
  EXPECT_EQ(*ParseKvMethod("squat-pre"), KvMethod::kSquatPre);
  EXPECT_EQ(*ParseKvMethod("squat_pre"), KvMethod::kSquatPre);
  EXPECT_EQ(*ParseKvMethod("squat-post"), KvMethod::kSquatPost);
  EXPECT_EQ(*ParseKvMethod("squat_post"), KvMethod::kSquatPost);
  for (KvMethod m : {KvMethod::kFp16, KvMethod::kKivi, KvMethod::kSquatPre, KvMethod::kSquatPost}) {
    EXPECT_EQ(*ParseKvMethod(KvMethodName(m)), m);
  }
  absl::StatusOr<KvMethod> bad = ParseKvMethod("int8");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("int8"), std::string::npos);
}

TEST(KvFormatTest, ValidationNamesTheParameter) {
  const int64_t d = 64;
  EXPECT_TRUE(ValidateKvFormat(Quantized(KvMethod::kSquatPre, 2, 4, 32, 64), d).ok());
  EXPECT_TRUE(ValidateKvFormat(Quantized(KvMethod::kKivi, 4, 4, 16, 32), d).ok());
  KvFormat fp16 = Fp16();
  fp16.k_bits = 3;  // ignored by fp16
  EXPECT_TRUE(ValidateKvFormat(fp16, d).ok());

  struct Case {
    KvFormat format;
    const char* names;
  };
  std::vector<Case> cases;
  cases.push_back({Quantized(KvMethod::kKivi, 3, 2, 32, 32), "k_bits"});
  cases.push_back({Quantized(KvMethod::kKivi, 2, 8, 32, 32), "v_bits"});
  cases.push_back({Quantized(KvMethod::kKivi, 2, 2, 32, 48), "residual_length"});   // R % G
  cases.push_back({Quantized(KvMethod::kKivi, 2, 2, 8, 32), "group_size"});         // G % (32/2)
  cases.push_back({Quantized(KvMethod::kKivi, 4, 4, 8, 36), "residual_length"});    // R % G
  cases.push_back({Quantized(KvMethod::kKivi, 2, 2, 128, 128), "group_size"});      // d % G
  KvFormat bad_block = Quantized(KvMethod::kSquatPost, 2, 2, 32, 32);
  bad_block.block_size = 48;  // d % g
  cases.push_back({bad_block, "block_size"});
  KvFormat bad_lambda = Quantized(KvMethod::kSquatPre, 2, 2, 32, 32);
  bad_lambda.lambda = -1;
  cases.push_back({bad_lambda, "lambda"});
  for (const Case& c : cases) {
    absl::Status s = ValidateKvFormat(c.format, d);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.names;
    EXPECT_NE(s.message().find(c.names), std::string::npos) << s.message();
  }
  // KIVI ignores the SQuat-only block size.
  KvFormat kivi = Quantized(KvMethod::kKivi, 2, 2, 32, 32);
  kivi.block_size = 48;
  EXPECT_TRUE(ValidateKvFormat(kivi, d).ok());
}

// ---- page sizing ----

TEST(KvPageTest, Fp16DefaultPageHoldsSixteenTokens) {
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Fp16(), 10);
  ASSERT_TRUE(manager);
  EXPECT_EQ(manager->stats().page_bytes, 16 * CountFp16TokenBytes(shape));
  EXPECT_EQ(manager->stats().total_pages, 10);
  EXPECT_EQ(manager->CapacityTokens(Fp16()), 160);
  EXPECT_DOUBLE_EQ(manager->BytesPerToken(Fp16()), static_cast<double>(CountFp16TokenBytes(shape)));
}

TEST(KvPageTest, QuantizedDefaultPageIsWholeResidualBlocksExactlyFilled) {
  const KvModelShape shape = SmallShape();
  for (const KvFormat& format :
       {Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), Quantized(KvMethod::kKivi, 4, 2, 16, 32),
        Quantized(KvMethod::kSquatPost, 4, 4, 32, 64)}) {
    // Smallest multiple of R whose bytes reach 16 full-precision tokens.
    int64_t tokens = format.residual_length;
    while (CountQuantizedBytes(shape, format, tokens) < 16 * CountFp16TokenBytes(shape)) {
      tokens += format.residual_length;
    }
    auto manager = MakeManager(shape, format, 4);
    ASSERT_TRUE(manager);
    EXPECT_EQ(manager->stats().page_bytes, CountQuantizedBytes(shape, format, tokens));
    EXPECT_EQ(TokensPerPage(shape, format, manager->stats().page_bytes), tokens);
    // An fp16 override still gets at least 16 tokens a page.
    EXPECT_GE(TokensPerPage(shape, Fp16(), manager->stats().page_bytes), 16);
    // Bytes per token vs the independent count (exact: tokens is a multiple of G).
    EXPECT_DOUBLE_EQ(manager->BytesPerToken(format),
                     static_cast<double>(CountQuantizedBytes(shape, format, tokens)) / tokens);
  }
}

TEST(KvPageTest, OtherFormatsGetWholeGroupsThatFit) {
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 4);
  ASSERT_TRUE(manager);
  const int64_t page_bytes = manager->stats().page_bytes;
  for (const KvFormat& format : {Quantized(KvMethod::kKivi, 4, 4, 32, 32), Quantized(KvMethod::kKivi, 2, 4, 16, 32),
                                 Quantized(KvMethod::kSquatPost, 4, 2, 32, 64)}) {
    const int64_t tokens = TokensPerPage(shape, format, page_bytes);
    EXPECT_GT(tokens, 0);
    EXPECT_EQ(tokens % format.residual_length, 0);
    EXPECT_EQ(tokens % format.group_size, 0);
    EXPECT_LE(CountQuantizedBytes(shape, format, tokens), page_bytes);
    EXPECT_GT(CountQuantizedBytes(shape, format, tokens + format.residual_length), page_bytes);
  }
}

TEST(KvPageTest, FormatThatFitsNoPageIsUnavailable) {
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Fp16(), 8);
  ASSERT_TRUE(manager);
  // 16 float32 tokens = 128 bytes per (layer, head, channel); 128 4-bit tokens need 160.
  const KvFormat too_big = Quantized(KvMethod::kKivi, 4, 4, 32, 128);
  ASSERT_LT(manager->stats().page_bytes, CountQuantizedBytes(shape, too_big, 128));
  EXPECT_EQ(manager->CapacityTokens(too_big), 0);
  auto seq = manager->NewSequence(too_big, 10);
  ASSERT_FALSE(seq.ok());
  EXPECT_EQ(seq.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(seq.status().message().find("kivi"), std::string::npos) << seq.status();
  EXPECT_NE(seq.status().message().find("unavailable"), std::string::npos) << seq.status();
  // R = 64 fits (80 of 128 bytes per element-slot).
  EXPECT_GT(manager->CapacityTokens(Quantized(KvMethod::kKivi, 4, 4, 32, 64)), 0);
}

// ---- the format catalogue ----

TEST(FormatCatalogueTest, ResolvesRequestsOverTheDefaultsOnce) {
  const KvModelShape shape = SmallShape();
  std::mt19937 rng(std::random_device{}());
  FormatDefaults defaults;
  defaults.method = "squat";
  defaults.k_bits = rng() % 2 ? 4 : 2;
  defaults.v_bits = rng() % 2 ? 4 : 2;
  auto catalogue = FormatCatalogue::Create(defaults, shape.head_dim);
  ASSERT_TRUE(catalogue.ok()) << catalogue.status();
  EXPECT_EQ(catalogue->default_format().block_size, shape.head_dim / 2);  // block_size 0: d / 2
  auto manager = MakeManager(shape, catalogue->default_format(), 40);
  ASSERT_TRUE(manager);

  const std::string default_label = absl::StrCat("squat-k", defaults.k_bits, "v", defaults.v_bits);
  auto plain = catalogue->Resolve({}, *manager);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->label, default_label);
  EXPECT_TRUE(plain->is_default);
  EXPECT_EQ(plain->capacity_tokens, manager->CapacityTokens(plain->format));
  EXPECT_EQ(plain->prompt_capacity_tokens, manager->PromptCapacityTokens(plain->format));
  EXPECT_GT(plain->capacity_tokens, 0);

  // Bits left at 0 keep the default's, whatever the method.
  auto kivi = catalogue->Resolve({"kivi", 0, 4}, *manager);
  ASSERT_TRUE(kivi.ok()) << kivi.status();
  EXPECT_EQ(kivi->label, absl::StrCat("kivi-k", defaults.k_bits, "v4"));
  EXPECT_FALSE(kivi->is_default);
  auto full = catalogue->Resolve({"fp16", 0, 0}, *manager);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->label, "fp16");
  EXPECT_EQ(full->format.k_bits, 16);

  for (const FormatRequest& bad : std::vector<FormatRequest>{{"fp16", 2, 0}, {"zip", 0, 0}, {"kivi", 3, 0},
                                                             {"squat-post", 0, 8}}) {
    auto resolved = catalogue->Resolve(bad, *manager);
    EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument) << bad.method << " " << bad.k_bits;
  }

  // fp16, each method at 2 and 4 bits, and the default when its bits differ; each once.
  std::vector<std::string> labels;
  int defaults_listed = 0;
  for (const ResolvedFormat& f : catalogue->Listed(*manager)) {
    labels.push_back(f.label);
    defaults_listed += f.is_default;
    EXPECT_EQ(f.capacity_tokens, manager->CapacityTokens(f.format)) << f.label;
  }
  EXPECT_EQ(defaults_listed, 1);
  const size_t expected = 7 + (defaults.k_bits != defaults.v_bits ? 1 : 0);
  EXPECT_EQ(labels.size(), expected) << absl::StrJoin(labels, ", ");
  EXPECT_NE(std::find(labels.begin(), labels.end(), default_label), labels.end());
  EXPECT_NE(std::find(labels.begin(), labels.end(), "squat-post-k4v4"), labels.end());
}

TEST(FormatCatalogueTest, RejectsAnInvalidDefault) {
  FormatDefaults defaults;
  defaults.method = "kivi";
  defaults.residual_length = 48;  // not a multiple of G = 32
  EXPECT_EQ(FormatCatalogue::Create(defaults, 64).status().code(), absl::StatusCode::kInvalidArgument);
  defaults = FormatDefaults();
  defaults.method = "lz4";
  EXPECT_EQ(FormatCatalogue::Create(defaults, 64).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvPageTest, CreateRejectsBadInputs) {
  KvModelShape shape = SmallShape();
  EXPECT_EQ(KvCacheManager::Create(shape, Fp16(), 100).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCacheManager::Create(shape, Quantized(KvMethod::kKivi, 3, 2, 32, 32), 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The model's sizes are ModelConfig's to check; the RoPE table must match them.
  shape.head_dim *= 2;
  EXPECT_EQ(KvCacheManager::Create(shape, Fp16(), 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
  shape = SmallShape();
  shape.rope_table = shape.rope_table.to(at::kDouble);
  EXPECT_EQ(KvCacheManager::Create(shape, Fp16(), 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- pool accounting ----

class KvPoolTest : public SeededTest {};

TEST_F(KvPoolTest, RandomSequencesReturnEveryPage) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 40);
  ASSERT_TRUE(manager);
  const std::vector<KvFormat> formats = {Fp16(), Quantized(KvMethod::kKivi, 2, 2, 32, 32),
                                         Quantized(KvMethod::kSquatPre, 2, 2, 32, 32),
                                         Quantized(KvMethod::kSquatPost, 4, 2, 16, 32),
                                         Quantized(KvMethod::kKivi, 4, 4, 32, 64)};
  std::vector<std::unique_ptr<SequenceKvCache>> live;
  int exhausted = 0, created = 0;
  for (int i = 0; i < 400; ++i) {
    if (!live.empty() && rng_() % 3 == 0) {
      live.erase(live.begin() + rng_() % live.size());
    } else {
      const KvFormat& format = formats[rng_() % formats.size()];
      // Up to 300 tokens: a quantized prompt's full-precision staging keeps them below the pool.
      const int64_t max_tokens = 1 + rng_() % 300;
      const PoolStats before = manager->stats();
      auto seq = manager->NewSequence(format, max_tokens);
      if (seq.ok()) {
        ++created;
        EXPECT_EQ((*seq)->length(), 0);
        EXPECT_EQ(manager->stats().used_pages, before.used_pages + (*seq)->pages());
        live.push_back(*std::move(seq));
      } else {
        ASSERT_EQ(seq.status().code(), absl::StatusCode::kResourceExhausted) << seq.status();
        ++exhausted;
        EXPECT_EQ(manager->stats().used_pages, before.used_pages);  // nothing taken
      }
    }
    int64_t held = 0;
    for (const auto& s : live) held += s->pages();
    ASSERT_EQ(manager->stats().used_pages, held);
    ASSERT_LE(held, manager->stats().total_pages);
  }
  EXPECT_GT(created, 20);
  EXPECT_GT(exhausted, 0);  // the pool was full at times
  live.clear();
  EXPECT_EQ(manager->stats().used_pages, 0);
}

TEST_F(KvPoolTest, CapacityIsExactAndFullPoolIsExhausted) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  const int64_t total = 16 + rng_() % 10;
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), total);
  ASSERT_TRUE(manager);
  EXPECT_EQ(manager->stats().total_bytes(), total * manager->stats().page_bytes);
  for (const KvFormat& format : {Fp16(), Quantized(KvMethod::kKivi, 2, 2, 32, 32),
                                 Quantized(KvMethod::kSquatPre, 4, 4, 32, 32)}) {
    SCOPED_TRACE(KvMethodName(format.method));
    const int64_t capacity = manager->CapacityTokens(format);
    ASSERT_GT(capacity, 0);
    {
      // A short prompt, then the reservation grows to the capacity: the whole pool.
      const int64_t prompt = 1 + rng_() % 32;
      auto whole = manager->NewSequence(format, prompt);
      ASSERT_TRUE(whole.ok()) << whole.status();
      EXPECT_EQ((*whole)->reserved_tokens(), prompt);
      Step(*manager, **whole, RandomInputs(shape, prompt), 0, prompt);
      ASSERT_TRUE((*whole)->Reserve(capacity).ok());
      EXPECT_EQ((*whole)->reserved_tokens(), capacity);
      EXPECT_EQ(manager->stats().used_pages, total);
      EXPECT_EQ((*whole)->pages(), total);
      // Nothing is left for another sequence; one more token could never fit.
      auto more = manager->NewSequence(format, 1);
      ASSERT_FALSE(more.ok());
      EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
      const absl::Status grow = (*whole)->Reserve(capacity + 1);
      EXPECT_EQ(grow.code(), absl::StatusCode::kInvalidArgument) << grow;
      EXPECT_EQ((*whole)->reserved_tokens(), capacity);
      EXPECT_EQ(manager->stats().used_pages, total);
    }
    EXPECT_EQ(manager->stats().used_pages, 0);
    auto too_long = manager->NewSequence(format, capacity + 1);
    ASSERT_FALSE(too_long.ok());
    EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument) << too_long.status();
    // The prompt capacity is exact: that many tokens can be reserved at once in the empty pool
    // (a squat sequence also collects its queries), one more never can.
    const int64_t prompt_capacity = manager->PromptCapacityTokens(format);
    ASSERT_GT(prompt_capacity, 0);
    EXPECT_LE(prompt_capacity, capacity);
    {
      auto longest = manager->NewSequence(format, prompt_capacity);
      EXPECT_TRUE(longest.ok()) << longest.status();
    }
    auto over = manager->NewSequence(format, prompt_capacity + 1);
    ASSERT_FALSE(over.ok());
    EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument) << over.status();
    auto at_once = manager->NewSequence(format, capacity);
    if (IsQuantized(format.method)) {
      // A prompt of that length could not even be staged in full precision.
      ASSERT_FALSE(at_once.ok());
      EXPECT_EQ(at_once.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(at_once.status().message().find("staging"), std::string::npos) << at_once.status();
    } else {
      EXPECT_TRUE(at_once.ok()) << at_once.status();
    }
  }
  // Fill with 16-token fp16 sequences: one page each, until the pool is full.
  std::vector<std::unique_ptr<SequenceKvCache>> fill;
  while (true) {
    auto seq = manager->NewSequence(Fp16(), 16);
    if (!seq.ok()) {
      EXPECT_EQ(seq.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    fill.push_back(*std::move(seq));
  }
  EXPECT_EQ(static_cast<int64_t>(fill.size()), total);  // one page each
  EXPECT_EQ(manager->stats().used_pages, manager->stats().total_pages);
  EXPECT_EQ(manager->NewSequence(Fp16(), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(KvPoolTest, Fp16SequencePagesAreTokensOverSixteen) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Fp16(), 64);
  ASSERT_TRUE(manager);
  for (int i = 0; i < 20; ++i) {
    const int64_t tokens = 1 + rng_() % 500;
    auto seq = manager->NewSequence(Fp16(), tokens);
    ASSERT_TRUE(seq.ok());
    EXPECT_EQ((*seq)->pages(), (tokens + 15) / 16);
    EXPECT_EQ(manager->stats().used_pages, (*seq)->pages());
  }
}

TEST_F(KvPoolTest, SharedSubspaceStateStaysWithTheManager) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  KvFormat shared = Quantized(KvMethod::kSquatPre, 2, 2, 32, 32);
  shared.shared_subspace = true;
  KvFormat own = shared;
  own.shared_subspace = false;
  auto manager = MakeManager(shape, shared, 60);
  ASSERT_TRUE(manager);
  const int64_t tokens = 100;
  auto a = manager->NewSequence(shared, tokens);
  ASSERT_TRUE(a.ok());
  const int64_t state_pages = manager->stats().used_pages - (*a)->pages();
  EXPECT_GT(state_pages, 0);  // the shared state is not the sequence's
  auto b = manager->NewSequence(own, tokens);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->pages(), (*a)->pages() + state_pages);  // a private state, same size
  a->reset();
  b->reset();
  EXPECT_EQ(manager->stats().used_pages, state_pages);
  auto c = manager->NewSequence(shared, tokens);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(manager->stats().used_pages, state_pages + (*c)->pages());  // reused, not grown
}

// Pages are leased from the pool, not the manager: a sequence's contents stay valid after its
// manager is gone, and its pages go back to the pool with it.
TEST(KvPoolLifetimeTest, SequenceMayOutliveItsManager) {
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 24);
  ASSERT_TRUE(manager);
  auto seq = manager->NewSequence(Quantized(KvMethod::kSquatPost, 2, 2, 32, 32), 50);
  ASSERT_TRUE(seq.ok());
  const RunInputs in = RandomInputs(shape, 40);
  Step(*manager, **seq, in, 0, 40);
  manager.reset();
  auto* cache = dynamic_cast<QuantizedSequenceCache*>(seq->get());
  ASSERT_NE(cache, nullptr);
  EXPECT_EQ(cache->length(), 40);
  // The last 8 keys stayed in the residual window, exactly.
  EXPECT_TRUE(at::equal(cache->residual_store().Read(1, KvPart::kKeys, 0, 8), in.k_rot[1].narrow(1, 32, 8)));
  seq->reset();
}

// ---- fp16 format ----

class Fp16AttentionTest : public SeededTest, public ::testing::WithParamInterface<std::tuple<int64_t, bool>> {};

TEST_P(Fp16AttentionTest, MatchesDenseFloat64Attention) {
  SCOPED_TRACE(SeedNote());
  const auto [n_rep, quantized_default] = GetParam();
  const KvModelShape shape = SmallShape(2, 2, n_rep, 64);
  auto manager = MakeManager(shape, quantized_default ? Quantized(KvMethod::kKivi, 2, 2, 32, 32) : Fp16(), 12);
  ASSERT_TRUE(manager);
  const int64_t prompt = 21, steps = 30, total = prompt + steps;
  auto seq = manager->NewSequence(Fp16(), total);
  ASSERT_TRUE(seq.ok()) << seq.status();
  const RunInputs in = RandomInputs(shape, total);

  std::vector<at::Tensor> outs = Step(*manager, **seq, in, 0, prompt);
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    ASSERT_EQ(outs[l].sizes(), at::IntArrayRef({shape.num_attention_heads, prompt, shape.head_dim}));
    const at::Tensor ref = DenseAttention64(in.q_rot[l].narrow(1, 0, prompt), in.k_rot[l].narrow(1, 0, prompt),
                                            in.v[l].narrow(1, 0, prompt), 0);
    EXPECT_LT(MaxAbsDiff(outs[l], ref), 1e-5) << "prefill layer " << l;
  }
  for (int64_t p = prompt; p < total; ++p) {
    outs = Step(*manager, **seq, in, p, 1);
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      const at::Tensor ref = DenseAttention64(in.q_rot[l].narrow(1, p, 1), in.k_rot[l].narrow(1, 0, p + 1),
                                              in.v[l].narrow(1, 0, p + 1), p);
      ASSERT_LT(MaxAbsDiff(outs[l], ref), 1e-5) << "decode position " << p << " layer " << l;
    }
  }
  EXPECT_EQ((*seq)->length(), total);
  EXPECT_THROW(Step(*manager, **seq, in, 0, 1), c10::Error);  // beyond max_tokens
}

INSTANTIATE_TEST_SUITE_P(GqaAndPages, Fp16AttentionTest,
                         ::testing::Combine(::testing::Values<int64_t>(1, 4), ::testing::Bool()));

// ---- T9: quantized decode equals dense attention over the dequantized cache ----

struct QuantCase {
  KvMethod method;
  int bits;
  int64_t group;
  int64_t prompt;  // below, at and above R = 32
};
void PrintTo(const QuantCase& c, std::ostream* os) {
  *os << KvMethodName(c.method) << " " << c.bits << "-bit G=" << c.group << " prompt " << c.prompt;
}

class QuantizedDecodeTest : public SeededTest, public ::testing::WithParamInterface<QuantCase> {};

// The expected cache contents, built with squat_math on the same inputs in the same chunks
// as the spec's state machine: the prompt's N_q keys, then R-key flushes; values per token.
class ReferenceCache {
 public:
  ReferenceCache(const KvModelShape& shape, const KvFormat& format, const RunInputs& in, int64_t prompt,
                 const RunInputs* subspace_prompt = nullptr)
      : shape_(shape), format_(format), in_(in) {
    const RunInputs& sub = subspace_prompt ? *subspace_prompt : in;
    const int64_t n_rep = shape.num_attention_heads / shape.num_kv_heads, d = shape.head_dim;
    const int64_t sub_tokens = subspace_prompt ? sub.q_rot[0].size(1) : prompt;
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      std::vector<std::vector<at::Tensor>> layer;
      for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
        std::vector<at::Tensor> c;
        if (format.method != KvMethod::kKivi) {
          const QuerySubspace s = SubspaceFromGram(BlockwiseGram(sub.q_rot[l], h, n_rep, sub_tokens),
                                                   format.subspace_dim, n_rep * sub_tokens);
          // Row-major, as the cache stores them: the BLAS product inside QuantizeKeys rounds
          // differently for a transposed operand.
          for (const at::Tensor& m : CompensationMatrices(s, format.lambda, d, format.block_size)) {
            c.push_back(m.to(at::kFloat).contiguous());
          }
        }
        layer.push_back(c);
      }
      compensation_.push_back(layer);
      key_codes_.emplace_back(shape.num_kv_heads);
      value_codes_.emplace_back();
      dequant_keys_.push_back(at::empty({shape.num_kv_heads, 0, d}));
      dequant_values_.push_back(at::empty({shape.num_kv_heads, 0, d}));
    }
    const int64_t r = format.residual_length;
    QuantizeKeysUpTo(prompt - prompt % r);
  }

  const at::Tensor& Keys(int64_t layer) const { return format_.method == KvMethod::kSquatPre ? in_.k_pre[layer] : in_.k_rot[layer]; }

  // Keys [0, n) quantized in one chunk starting where the previous one ended.
  void QuantizeKeysUpTo(int64_t n) {
    const int64_t from = dequant_keys_[0].size(1);
    if (n <= from) return;
    for (int64_t l = 0; l < shape_.num_layers; ++l) {
      std::vector<at::Tensor> heads;
      for (int64_t h = 0; h < shape_.num_kv_heads; ++h) {
        const QuantizedTensor q = QuantizeKeys(Keys(l)[h].narrow(0, from, n - from).contiguous(), format_.k_bits,
                                               format_.group_size, format_.block_size, compensation_[l][h], at::kHalf);
        key_codes_[l][h].push_back(q);
        heads.push_back(DequantizeKeys(q, format_.group_size, at::kFloat));
      }
      dequant_keys_[l] = at::cat({dequant_keys_[l], at::stack(heads)}, 1);
    }
  }
  void QuantizeValuesUpTo(int64_t n) {
    const int64_t from = dequant_values_[0].size(1);
    if (n <= from) return;
    for (int64_t l = 0; l < shape_.num_layers; ++l) {
      const int64_t h = shape_.num_kv_heads, d = shape_.head_dim;
      const QuantizedTensor q = QuantizeValues(in_.v[l].narrow(1, from, n - from).reshape({-1, d}).contiguous(),
                                               format_.v_bits, format_.group_size, at::kHalf);
      value_codes_[l].push_back(q);
      dequant_values_[l] = at::cat(
          {dequant_values_[l], DequantizeValues(q, format_.group_size, at::kFloat).view({h, n - from, d})}, 1);
    }
  }

  // Expected output of the decode step at position p (before the step: N_q = p - p mod R
  // quantized keys, N_v = max(0, p - R) quantized values; everything after is exact).
  at::Tensor DecodeOutput(int64_t layer, int64_t p) {
    const int64_t r = format_.residual_length;
    const int64_t n_q = p - p % r, n_v = std::max<int64_t>(0, p - r);
    QuantizeKeysUpTo(n_q);
    QuantizeValuesUpTo(n_v);
    at::Tensor keys = at::cat({dequant_keys_[layer].narrow(1, 0, n_q), Keys(layer).narrow(1, n_q, p + 1 - n_q)}, 1);
    keys = format_.method == KvMethod::kSquatPre ? Rope64(keys, 0) : keys.to(at::kDouble);
    at::Tensor values =
        at::cat({dequant_values_[layer].narrow(1, 0, n_v), in_.v[layer].narrow(1, n_v, p + 1 - n_v)}, 1);
    return DenseAttention64(in_.q_rot[layer].narrow(1, p, 1), keys, values, p);
  }

  // Packed words of the quantized tokens, as the pages should hold them.
  at::Tensor KeyWords(int64_t layer, int64_t h) const {
    std::vector<at::Tensor> codes;
    for (const QuantizedTensor& q : key_codes_[layer][h]) codes.push_back(q.codes);
    return PackLastDim(at::cat(codes, 0).t().contiguous(), format_.k_bits);  // [d, N_q / fpi]
  }
  at::Tensor ValueWords(int64_t layer) const {
    std::vector<at::Tensor> codes;
    for (const QuantizedTensor& q : value_codes_[layer]) {
      codes.push_back(q.codes.view({shape_.num_kv_heads, -1, shape_.head_dim}));
    }
    return PackLastDim(at::cat(codes, 1), format_.v_bits);  // [H, N_v, d / fpi]
  }
  at::Tensor KeyScales(int64_t layer, int64_t h) const {
    std::vector<at::Tensor> s;
    for (const QuantizedTensor& q : key_codes_[layer][h]) s.push_back(q.scale);
    return at::cat(s, 0).t().contiguous();  // [d, N_q / G]
  }

 private:
  KvModelShape shape_;
  KvFormat format_;
  const RunInputs& in_;
  std::vector<std::vector<std::vector<at::Tensor>>> compensation_;     // [layer][head][i]
  std::vector<std::vector<std::vector<QuantizedTensor>>> key_codes_;   // [layer][head][chunk]
  std::vector<std::vector<QuantizedTensor>> value_codes_;              // [layer][chunk] of [H * n, d]
  std::vector<at::Tensor> dequant_keys_, dequant_values_;              // [H, n, d] per layer
};

TEST_P(QuantizedDecodeTest, OutputEqualsDenseAttentionOverDequantizedCache) {
  SCOPED_TRACE(SeedNote());
  const QuantCase c = GetParam();
  const KvModelShape shape = SmallShape();
  const KvFormat format = Quantized(c.method, c.bits, c.bits, c.group, 32);
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 40);
  ASSERT_TRUE(manager);
  // Long enough to cross a page boundary of the quantized pages, several flushes and slides.
  const int64_t tokens_per_page = TokensPerPage(shape, format, manager->stats().page_bytes);
  const int64_t prompt = c.prompt, total = tokens_per_page + 32 + 20;  // N_v > one page
  auto seq = manager->NewSequence(format, total);
  ASSERT_TRUE(seq.ok()) << seq.status();
  auto* cache = dynamic_cast<QuantizedSequenceCache*>(seq->get());
  ASSERT_NE(cache, nullptr);
  const RunInputs in = RandomInputs(shape, total);
  ReferenceCache ref(shape, format, in, prompt);

  std::vector<at::Tensor> outs = Step(*manager, **seq, in, 0, prompt);
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    const at::Tensor dense = DenseAttention64(in.q_rot[l].narrow(1, 0, prompt), in.k_rot[l].narrow(1, 0, prompt),
                                              in.v[l].narrow(1, 0, prompt), 0);
    EXPECT_LT(MaxAbsDiff(outs[l], dense), 1e-5) << "prefill is full precision, layer " << l;
  }
  double worst = 0, quantization_effect = 0;
  for (int64_t p = prompt; p < total; ++p) {
    outs = Step(*manager, **seq, in, p, 1);
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      const at::Tensor expected = ref.DecodeOutput(l, p);
      const double diff = MaxAbsDiff(outs[l], expected);
      worst = std::max(worst, diff);
      ASSERT_LT(diff, 1e-4) << "decode position " << p << " layer " << l;
      // The same step over exact keys and values, to see that quantization matters here.
      at::Tensor exact_keys = c.method == KvMethod::kSquatPre ? Rope64(in.k_pre[l].narrow(1, 0, p + 1), 0)
                                                              : in.k_rot[l].narrow(1, 0, p + 1);
      const at::Tensor exact = DenseAttention64(in.q_rot[l].narrow(1, p, 1), exact_keys, in.v[l].narrow(1, 0, p + 1), p);
      quantization_effect = std::max(quantization_effect, MaxAbsDiff(exact, expected));
    }
  }
  EXPECT_GT(quantization_effect, 100 * worst);  // the comparison is sensitive to the quantized part

  // The pages hold exactly the packed codes and scales of the reference quantization.
  const int64_t n_q = total - total % 32, n_v = total - 32;
  ref.QuantizeKeysUpTo(n_q);
  ref.QuantizeValuesUpTo(n_v);
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    const PackedKeys keys = cache->quantized_store().ReadKeys(l, n_q);
    for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
      EXPECT_TRUE(at::equal(keys.words[h], ref.KeyWords(l, h))) << "layer " << l << " head " << h;
      EXPECT_TRUE(at::equal(keys.scale[h], ref.KeyScales(l, h)));
    }
    EXPECT_TRUE(at::equal(cache->quantized_store().ReadValues(l, n_v).words, ref.ValueWords(l)));
  }
  // Byte layout of the first page (what the CUDA kernels will read): per layer, K words
  // [H, d, tpp / fpi_K] then V words [H, tpp, d / fpi_V], int32.
  const PageLease& pages = cache->data_pages();
  const int64_t h = shape.num_kv_heads, d = shape.head_dim;
  const int64_t layer_bytes = CountQuantizedBytes(shape, format, tokens_per_page) / shape.num_layers;
  const int64_t key_words = tokens_per_page / (32 / c.bits), value_words = d / (32 / c.bits);
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    at::Tensor page_keys = pages.pool().View(pages.pages()[0], l * layer_bytes, h * d * key_words, at::kInt)
                               .view({h, d, key_words});
    at::Tensor page_values = pages.pool()
                                 .View(pages.pages()[0], l * layer_bytes + h * d * key_words * 4,
                                       h * tokens_per_page * value_words, at::kInt)
                                 .view({h, tokens_per_page, value_words});
    for (int64_t i = 0; i < h; ++i) {
      EXPECT_TRUE(at::equal(page_keys[i], ref.KeyWords(l, i).narrow(1, 0, key_words)));
    }
    EXPECT_TRUE(at::equal(page_values, ref.ValueWords(l).narrow(1, 0, tokens_per_page)));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, QuantizedDecodeTest,
    ::testing::Values(QuantCase{KvMethod::kKivi, 2, 32, 37}, QuantCase{KvMethod::kKivi, 4, 32, 5},
                      QuantCase{KvMethod::kSquatPre, 2, 32, 37}, QuantCase{KvMethod::kSquatPre, 4, 16, 20},
                      QuantCase{KvMethod::kSquatPost, 2, 16, 64}, QuantCase{KvMethod::kSquatPost, 4, 32, 5}),
    [](const ::testing::TestParamInfo<QuantCase>& info) {
      const char* name = info.param.method == KvMethod::kSquatPost ? "squat_post" : KvMethodName(info.param.method);
      return std::string(name) + "_" + std::to_string(info.param.bits) + "bit_G" + std::to_string(info.param.group);
    });

// A shared subspace is built from the first prompt and used for later sequences' keys.
TEST_F(KvPoolTest, SharedSubspaceQuantizesWithTheFirstPrompt) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  KvFormat format = Quantized(KvMethod::kSquatPost, 2, 2, 32, 32);
  format.shared_subspace = true;
  format.lambda = 0.5;  // strong enough that the two prompts' compensations differ visibly
  format.subspace_dim = 8;
  auto manager = MakeManager(shape, format, 40);
  ASSERT_TRUE(manager);
  const int64_t prompt = 64;
  const RunInputs first = RandomInputs(shape, prompt), second = RandomInputs(shape, prompt);
  auto a = manager->NewSequence(format, prompt);
  auto b = manager->NewSequence(format, prompt);
  ASSERT_TRUE(a.ok() && b.ok());
  Step(*manager, **a, first, 0, prompt);
  Step(*manager, **b, second, 0, prompt);
  ReferenceCache with_first(shape, format, second, prompt, &first);
  ReferenceCache with_own(shape, format, second, prompt);
  auto* cache = dynamic_cast<QuantizedSequenceCache*>(b->get());
  ASSERT_NE(cache, nullptr);
  bool differs_from_own = false;
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    const PackedKeys keys = cache->quantized_store().ReadKeys(l, prompt);
    for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
      EXPECT_TRUE(at::equal(keys.words[h], with_first.KeyWords(l, h)));
      differs_from_own |= !at::equal(keys.words[h], with_own.KeyWords(l, h));
    }
  }
  EXPECT_TRUE(differs_from_own);
}

// ---- the same code on a CUDA device (skipped without one) ----

TEST_F(KvPoolTest, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  SCOPED_TRACE(SeedNote());
  const KvModelShape cpu_shape = SmallShape();
  const KvModelShape gpu_shape = OnDevice(cpu_shape, at::Device(at::kCUDA, 0));
  const int64_t prompt = 37, total = 120;
  const RunInputs in = RandomInputs(cpu_shape, total);
  const RunInputs gpu_in = ToDevice(in, gpu_shape.device);
  for (const KvFormat& format : {Fp16(), Quantized(KvMethod::kKivi, 2, 2, 32, 32),
                                 Quantized(KvMethod::kSquatPre, 4, 2, 32, 32),
                                 Quantized(KvMethod::kSquatPost, 2, 4, 16, 32)}) {
    SCOPED_TRACE(KvMethodName(format.method));
    auto cpu_manager = MakeManager(cpu_shape, format, 40);
    auto gpu_manager = MakeManager(gpu_shape, format, 40);
    ASSERT_TRUE(cpu_manager && gpu_manager);
    auto cpu_seq = cpu_manager->NewSequence(format, total);
    auto gpu_seq = gpu_manager->NewSequence(format, total);
    ASSERT_TRUE(cpu_seq.ok() && gpu_seq.ok());
    double worst = 0;
    for (int64_t p = 0; p < total; p = p == 0 ? prompt : p + 1) {
      const int64_t count = p == 0 ? prompt : 1;
      const std::vector<at::Tensor> a = Step(*cpu_manager, **cpu_seq, in, p, count),
                                    b = Step(*gpu_manager, **gpu_seq, gpu_in, p, count);
      for (size_t l = 0; l < a.size(); ++l) {
        ASSERT_TRUE(b[l].device().is_cuda());
        worst = std::max(worst, MaxAbsDiff(a[l], b[l].cpu()));
      }
    }
    // Rounding differs between devices; a flipped quantization code would show as ~1e-2.
    EXPECT_LT(worst, 2e-3);
    std::cout << KvMethodName(format.method) << ": max |cuda - cpu| = " << worst << "\n";
  }
}

// ---- the stacked (all heads of a layer at once) SQuat state math ----

TEST_F(SeededTest, StackedCompensationEqualsPerHeadMath) {
  SCOPED_TRACE(SeedNote());
  const int64_t heads = 3, d = 32;
  for (const auto& [rows, r, g, lambda] : std::vector<std::tuple<int64_t, int64_t, int64_t, double>>{
           {40, 8, 16, 0.05}, {5, 8, 8, 0.5}, {100, 60, 16, 1e-3}, {64, 4, 16, 0.0}, {30, 4, 32, 0.1}}) {
    // Query rows with a few dominant directions, as trained models have.
    const at::Tensor mix = at::randn({heads, 6, d}, at::kDouble) * 3.0;
    const at::Tensor queries = at::matmul(at::randn({heads, rows, 6}, at::kDouble), mix) +
                               0.1 * at::randn({heads, rows, d}, at::kDouble);
    const at::Tensor grams = at::matmul(queries.transpose(1, 2), queries);
    const at::Tensor stacked = StackedCompensation(grams, r, rows, lambda, g);
    for (int64_t h = 0; h < heads; ++h) {
      const std::vector<at::Tensor> blocks = CompensationMatrices(SubspaceFromGram(grams[h], r, rows), lambda, d, g);
      std::vector<at::Tensor> flat;
      for (const at::Tensor& c : blocks) flat.push_back(c.reshape({-1}));
      const at::Tensor expected = flat.empty() ? at::empty({0}, at::kDouble) : at::cat(flat);
      ASSERT_EQ(stacked[h].numel(), expected.numel());
      if (expected.numel() == 0) continue;  // g = d: one block, nothing to feed forward
      const double scale = std::max(1.0, expected.abs().max().item<double>());
      EXPECT_LT((stacked[h] - expected).abs().max().item<double>(), 1e-9 * scale)
          << "rows " << rows << " r " << r << " g " << g << " lambda " << lambda << " head " << h;
      if (lambda == 0) EXPECT_EQ(stacked[h].abs().max().item<double>(), 0.0);
    }
  }
}

// The CPU-threaded build of many heads (the cache's path, on CUDA too) equals
// StackedCompensation of each matrix alone.
TEST_F(SeededTest, ParallelStackedCompensationEqualsStacked) {
  SCOPED_TRACE(SeedNote());
  const int64_t count = 11, d = 32, rows = 50, r = 12, g = 16;
  const at::Tensor mix = at::randn({count, 6, d}, at::kDouble) * 3.0;
  const at::Tensor queries =
      at::matmul(at::randn({count, rows, 6}, at::kDouble), mix) + 0.1 * at::randn({count, rows, d}, at::kDouble);
  const at::Tensor grams = at::matmul(queries.transpose(1, 2), queries);
  const at::Tensor parallel = ParallelStackedCompensation(grams, r, rows, 1e-2, g);
  ASSERT_EQ(parallel.size(0), count);
  for (int64_t m = 0; m < count; ++m) {
    const at::Tensor alone = StackedCompensation(grams.narrow(0, m, 1), r, rows, 1e-2, g)[0];
    ASSERT_EQ(parallel[m].numel(), alone.numel());
    const double scale = std::max(1.0, alone.abs().max().item<double>());
    EXPECT_GT(alone.abs().max().item<double>(), 0.0);
    EXPECT_LT((parallel[m] - alone).abs().max().item<double>(), 1e-10 * scale) << "matrix " << m;
  }
  // Nothing to feed forward when one block spans the head.
  EXPECT_EQ(ParallelStackedCompensation(grams, r, rows, 1e-2, d).size(1), 0);
}

// StackedCompensation hands the whole stack to a given eigensolver once, and BatchedEigh (the
// cache's eigensolver) is LibTorch's eigh off CUDA, so CPU states do not change.
TEST_F(SeededTest, StackedCompensationWithBatchedEighEqualsDefault) {
  SCOPED_TRACE(SeedNote());
  const int64_t count = 6, d = 32, rows = 40, r = 10, g = 16;
  const at::Tensor queries = at::randn({count, rows, d}, at::kDouble) * at::rand({1, 1, d}, at::kDouble) * 3.0;
  const at::Tensor grams = at::matmul(queries.transpose(1, 2), queries);
  int calls = 0;
  bool used_batched = true;
  const at::Tensor with_batched = StackedCompensation(grams, r, rows, 0.05, g, [&](const at::Tensor& sym) {
    ++calls;
    EXPECT_EQ(sym.size(0), count);
    return BatchedEigh(sym, &used_batched);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(used_batched);
  const at::Tensor plain = StackedCompensation(grams, r, rows, 0.05, g);
  EXPECT_GT(plain.abs().max().item<double>(), 0.0);
  EXPECT_TRUE(at::equal(with_batched, plain));
}

// ---- T10: residual-window state machine ----

class WindowStateTest : public SeededTest {};

TEST_F(WindowStateTest, InvariantsAndFlushesFollowTheSpec) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  const int64_t r = 32;
  const KvFormat format = Quantized(KvMethod::kSquatPre, 2, 2, 16, r);
  auto manager = MakeManager(shape, format, 40);
  ASSERT_TRUE(manager);
  for (int64_t prompt : {int64_t{1}, r - 1, r, r + 1, 3 * r + 5}) {
    SCOPED_TRACE("L = " + std::to_string(prompt));
    const int64_t steps = 2 * r + 3;
    auto seq = manager->NewSequence(format, prompt + steps);
    ASSERT_TRUE(seq.ok()) << seq.status();
    auto* cache = dynamic_cast<QuantizedSequenceCache*>(seq->get());
    ASSERT_NE(cache, nullptr);
    const RunInputs in = RandomInputs(shape, prompt + steps);
    int64_t flushes = 0;
    for (int64_t n = 0; n <= steps; ++n) {
      const int64_t total = prompt + n;
      if (n == 0) {
        Step(*manager, **seq, in, 0, prompt);
      } else {
        Step(*manager, **seq, in, total - 1, 1);
      }
      const bool flush = n > 0 && total % r == 0;
      flushes += flush;
      {
        const WindowState& w = cache->window();
        ASSERT_EQ(w.residual_keys, total % r) << "n = " << n;
        ASSERT_EQ(w.quantized_keys, total - total % r) << "n = " << n;
        ASSERT_EQ(w.residual_values, std::min(r, total)) << "n = " << n;
        ASSERT_EQ(w.quantized_values, std::max<int64_t>(0, total - r)) << "n = " << n;
        ASSERT_EQ(w.step_flushed, flush) << "n = " << n;
        ASSERT_EQ(w.key_flushes, flushes) << "n = " << n;
        if (flush) {
          // The flushing step read that whole block in full precision.
          EXPECT_EQ(w.step_residual_keys, r);
          EXPECT_EQ(w.step_quantized_keys, total - r);
        } else if (n > 0) {
          EXPECT_EQ(w.step_residual_keys, total % r);
          EXPECT_EQ(w.step_quantized_keys, total - total % r);
        }
      }
    }
    EXPECT_EQ((*seq)->length(), prompt + steps);
  }
  EXPECT_EQ(manager->stats().used_pages, 0);
}

TEST_F(WindowStateTest, RejectsMisuse) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kKivi, 2, 2, 32, 32), 8);
  ASSERT_TRUE(manager);
  auto seq = manager->NewSequence(Quantized(KvMethod::kKivi, 2, 2, 32, 32), 40);
  ASSERT_TRUE(seq.ok());
  const RunInputs in = RandomInputs(shape, 40);
  Step(*manager, **seq, in, 0, 10);
  EXPECT_THROW(Step(*manager, **seq, in, 10, 2), c10::Error);  // decode takes one token
  EXPECT_EQ((*seq)->length(), 10);
  // Inputs of the wrong dtype or shape are refused by the backend.
  auto batch = StepBatch::Create(*manager, StepCapacity{4, 2, manager->StepPageIds(2)});
  ASSERT_TRUE(batch.ok());
  const std::vector<int32_t> tokens(4, 0);
  (*batch)->Begin();
  (*batch)->Add(seq->get(), tokens.data(), 1, true, false);
  (*batch)->Seal();
  AttentionBackend& backend = manager->backend();
  backend.BeginStep(**batch);
  auto row = [&](const at::Tensor& t) { return t.narrow(1, 10, 1).transpose(0, 1).contiguous(); };
  const at::Tensor out = at::empty_like(row(in.q_rot[0]));
  EXPECT_THROW(backend.Attend(0, **batch, row(in.q_rot[0]).to(at::kDouble), row(in.k_pre[0]), row(in.k_rot[0]),
                              row(in.v[0]), out),
               c10::Error);  // wrong dtype
  EXPECT_THROW(backend.Attend(0, **batch, row(in.q_rot[0]), row(in.k_pre[0]).narrow(1, 0, 1), row(in.k_rot[0]),
                              row(in.v[0]), out),
               c10::Error);  // wrong heads
  EXPECT_THROW(backend.Attend(2, **batch, row(in.q_rot[0]), row(in.k_pre[0]), row(in.k_rot[0]), row(in.v[0]), out),
               c10::Error);  // no such layer
  // Past the capacity of the step's buffers.
  (*batch)->Begin();
  EXPECT_THROW((*batch)->Add(seq->get(), tokens.data(), 5, true, false), c10::Error);
  EXPECT_EQ((*seq)->length(), 10);
}


// ---- reservation growth ----

TEST_F(KvPoolTest, ReserveGrowsAllOrNothingAndAttendStopsAtTheReservation) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  for (const KvFormat& format : {Fp16(), Quantized(KvMethod::kKivi, 2, 2, 32, 32),
                                 Quantized(KvMethod::kSquatPre, 2, 2, 32, 32)}) {
    SCOPED_TRACE(KvMethodName(format.method));
    auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 30);
    ASSERT_TRUE(manager);
    // Growth to `total` needs at least one more page of the format's token storage.
    const int64_t per_page = TokensPerPage(shape, format, manager->stats().page_bytes);
    const int64_t prompt = 20 + rng_() % 30, total = prompt + per_page + 40;
    const RunInputs in = RandomInputs(shape, total);
    auto seq = manager->NewSequence(format, prompt);
    ASSERT_TRUE(seq.ok()) << seq.status();
    SequenceKvCache& cache = **seq;
    Step(*manager, cache, in, 0, prompt);
    const int64_t pages = cache.pages();
    EXPECT_EQ(manager->stats().used_pages, pages);

    // One token past the reservation: refused before anything is stored.
    EXPECT_THROW(Step(*manager, cache, in, prompt, 1), c10::Error);
    EXPECT_EQ(cache.length(), prompt);
    EXPECT_EQ(cache.pages(), pages);

    // Someone else holds the rest of the pool: growth fails and takes nothing.
    const int64_t free_pages = manager->stats().total_pages - manager->stats().used_pages;
    auto hog = manager->NewSequence(Fp16(), free_pages * TokensPerPage(shape, Fp16(), manager->stats().page_bytes));
    ASSERT_TRUE(hog.ok()) << hog.status();
    ASSERT_EQ(manager->stats().used_pages, manager->stats().total_pages);
    const absl::Status refused = cache.Reserve(total);
    EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
    EXPECT_EQ(cache.reserved_tokens(), prompt);
    EXPECT_EQ(cache.pages(), pages);
    EXPECT_EQ(manager->stats().used_pages, manager->stats().total_pages);
    hog->reset();

    // Never-fitting growth is a different error, and also takes nothing.
    const absl::Status never = cache.Reserve(100000);
    EXPECT_EQ(never.code(), absl::StatusCode::kInvalidArgument) << never;
    EXPECT_EQ(cache.pages(), pages);
    EXPECT_TRUE(cache.Reserve(prompt - 1).ok());  // already fits: no-op
    EXPECT_EQ(cache.reserved_tokens(), prompt);

    ASSERT_TRUE(cache.Reserve(total).ok());
    EXPECT_EQ(cache.reserved_tokens(), total);
    EXPECT_GT(cache.pages(), pages);
    EXPECT_EQ(manager->stats().used_pages, cache.pages());
    // Decoding across the growth is still exact attention for fp16 (the quantized formats'
    // decode is T9's); every format accepts exactly the reserved tokens.
    for (int64_t p = prompt; p < total; ++p) {
      const std::vector<at::Tensor> outs = Step(*manager, cache, in, p, 1);
      if (!IsQuantized(format.method)) {
        const at::Tensor ref = DenseAttention64(in.q_rot[1].narrow(1, p, 1), in.k_rot[1].narrow(1, 0, p + 1),
                                                in.v[1].narrow(1, 0, p + 1), p);
        ASSERT_LT(MaxAbsDiff(outs[1], ref), 1e-5) << "position " << p;
      }
    }
    EXPECT_THROW(Step(*manager, cache, in, total - 1, 1), c10::Error);
    EXPECT_EQ(cache.length(), total);
    seq->reset();
    EXPECT_EQ(manager->stats().used_pages, 0);
  }
}

// ---- chunked prefill ----

// Random chunk sizes covering [0, tokens), at least two chunks.
std::vector<int64_t> RandomChunks(std::mt19937& rng, int64_t tokens) {
  std::vector<int64_t> chunks;
  for (int64_t done = 0; done < tokens;) {
    const int64_t left = tokens - done;
    int64_t n = 1 + static_cast<int64_t>(rng() % 45);
    if (chunks.empty()) n = std::min(n, left - 1);
    n = std::min(n, left);
    chunks.push_back(n);
    done += n;
  }
  return chunks;
}

// The Gram sum does not depend on how the prompt was chunked, bit for bit (a sum per chunk
// would differ in the last bits), and it is the block-wise sum of spec 4.1's Gram.
TEST_F(KvPoolTest, QueryGramIsTheSameForEveryChunking) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape(2, 2, 3, 64);
  const int64_t n_rep = 3, page_bytes = DefaultPageBytes(shape, Fp16());
  const int64_t gram_pages = QueryGramPages(shape, page_bytes), pending_pages = PendingQueryPages(shape, page_bytes);
  auto pool = PagePool::Create(page_bytes, 4 * (gram_pages + pending_pages), at::kCPU);
  ASSERT_TRUE(pool.ok());
  auto lease = [&](int64_t n) { return PageLease(*pool, *(*pool)->Allocate(n)); };
  const int64_t tokens = 3 * kGramBlockTokens + 1 + rng_() % (2 * kGramBlockTokens);
  const at::Tensor q = at::randn({shape.num_attention_heads, tokens, shape.head_dim}) * 3.0;
  std::vector<at::Tensor> totals;
  for (int run = 0; run < 3; ++run) {
    QueryGramAccumulator gram(lease(gram_pages), lease(pending_pages), shape);
    const std::vector<int64_t> chunks = run == 0 ? std::vector<int64_t>{tokens} : RandomChunks(rng_, tokens);
    int64_t done = 0;
    for (int64_t n : chunks) {
      for (int64_t l = 0; l < shape.num_layers; ++l) gram.Add(l, (q * (l + 1)).narrow(1, done, n));
      done += n;
    }
    EXPECT_EQ(gram.tokens(1), tokens);
    totals.push_back(gram.Total(1));
  }
  EXPECT_TRUE(at::equal(totals[0], totals[1]));
  EXPECT_TRUE(at::equal(totals[0], totals[2]));
  for (int64_t h = 0; h < shape.num_kv_heads; ++h) {
    EXPECT_TRUE(at::equal(totals[0][h], BlockwiseGram(q * 2, h, n_rep, tokens))) << "head " << h;
    // The Gram of all rows in one product: equal up to round-off.
    const at::Tensor all = QueryGram((q * 2).narrow(0, h * n_rep, n_rep).reshape({-1, shape.head_dim}));
    EXPECT_LT((all - totals[0][h]).abs().max().item<double>(), 1e-9 * all.abs().max().item<double>());
  }
}

struct ChunkCase {
  KvMethod method;
  int bits;
  int64_t group;
};
void PrintTo(const ChunkCase& c, std::ostream* os) {
  *os << KvMethodName(c.method) << " " << c.bits << "-bit G=" << c.group;
}
// A format, on the CPU or (skipped without one) a CUDA device.
using ChunkParam = std::tuple<ChunkCase, bool>;
std::string ChunkCaseName(const ::testing::TestParamInfo<ChunkParam>& info) {
  const ChunkCase& c = std::get<0>(info.param);
  const char* name = c.method == KvMethod::kSquatPost ? "squat_post" : KvMethodName(c.method);
  return std::string(name) + "_" + std::to_string(c.bits) + "bit_G" + std::to_string(c.group) +
         (std::get<1>(info.param) ? "_cuda" : "_cpu");
}
// The CPU shape's device for this parameter; false when CUDA is asked for and absent.
bool TestDevice(const ChunkParam& param, at::Device* device) {
  *device = std::get<1>(param) ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  return !std::get<1>(param) || at::hasCUDA();
}
KvFormat FormatOf(const ChunkCase& c) {
  return c.method == KvMethod::kFp16 ? Fp16() : Quantized(c.method, c.bits, c.bits, c.group, 32);
}

// Everything a quantized sequence holds after its prompt, as tensors to compare bit for bit:
// packed keys and values with their metadata, the valid residual slots, and the C_i.
std::vector<at::Tensor> QuantizedContents(const QuantizedSequenceCache& cache, const KvModelShape& shape) {
  std::vector<at::Tensor> parts;
  const int64_t ring = cache.format().residual_length + 1;
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    const WindowState& w = cache.window();
    const PackedKeys keys = cache.quantized_store().ReadKeys(l, w.quantized_keys);
    const PackedValues values = cache.quantized_store().ReadValues(l, w.quantized_values);
    for (const at::Tensor& t : {keys.words, keys.scale, keys.min, values.words, values.scale, values.min}) {
      parts.push_back(t.clone());
    }
    parts.push_back(cache.residual_store().Read(l, KvPart::kKeys, 0, w.residual_keys).clone());
    for (int64_t t = w.quantized_values; t < w.tokens(); ++t) {
      parts.push_back(cache.residual_store().Read(l, KvPart::kValues, t % ring, 1).clone());
    }
    if (cache.subspace()) {
      for (const auto& head : cache.subspace()->Load(l)) {
        for (const at::Tensor& c : head) parts.push_back(c.clone());
      }
    }
  }
  return parts;
}

bool AllEqual(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i].sizes() == b[i].sizes() && at::equal(a[i], b[i]))) return false;
  }
  return true;
}

class ChunkedPrefillTest : public SeededTest, public ::testing::WithParamInterface<ChunkParam> {};

TEST_P(ChunkedPrefillTest, MatchesOneShotPrefillBitForBit) {
  SCOPED_TRACE(SeedNote());
  at::Device device = at::kCPU;
  if (!TestDevice(GetParam(), &device)) GTEST_SKIP() << "no CUDA device";
  const KvFormat format = FormatOf(std::get<0>(GetParam()));
  const KvModelShape cpu_shape = SmallShape(), shape = OnDevice(cpu_shape, device);
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 80);
  ASSERT_TRUE(manager);
  // Several Gram blocks, R blocks and staging pages; decode long enough for a flush.
  const int64_t prompt = 100 + rng_() % 120, steps = 40, total = prompt + steps;
  const RunInputs cpu_in = RandomInputs(cpu_shape, total), in = ToDevice(cpu_in, device);

  auto one_shot = manager->NewSequence(format, total);
  ASSERT_TRUE(one_shot.ok()) << one_shot.status();
  Step(*manager, **one_shot, in, 0, prompt);

  const std::vector<int64_t> chunks = RandomChunks(rng_, prompt);
  auto chunked = manager->NewSequence(format, chunks[0]);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  auto* quantized = dynamic_cast<QuantizedSequenceCache*>(chunked->get());
  int64_t done = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = chunks[i];
    const bool last = i + 1 == chunks.size();
    ASSERT_TRUE((*chunked)->Reserve(done + n).ok());
    const std::vector<at::Tensor> outs = Step(*manager, **chunked, in, done, n, /*prompt_complete=*/last);
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      // Full precision over the whole prompt so far.
      const at::Tensor ref = DenseAttention64(cpu_in.q_rot[l].narrow(1, done, n),
                                              cpu_in.k_rot[l].narrow(1, 0, done + n),
                                              cpu_in.v[l].narrow(1, 0, done + n), done);
      ASSERT_LT(MaxAbsDiff(outs[l].cpu(), ref), 1e-5) << "chunk at " << done << " layer " << l;
    }
    done += n;
    EXPECT_EQ((*chunked)->length(), done);
    if (!last) {
      EXPECT_EQ((*chunked)->subspace(), nullptr);  // not before the prompt is complete
      if (quantized) {
        EXPECT_GT(quantized->staging_pages(), 0);
      }
    }
  }
  EXPECT_EQ(manager->stats().used_pages, (*one_shot)->pages() + (*chunked)->pages());

  if (quantized) {
    auto* reference = dynamic_cast<QuantizedSequenceCache*>(one_shot->get());
    ASSERT_NE(reference, nullptr);
    EXPECT_EQ(quantized->staging_pages(), 0);  // returned at completion
    EXPECT_EQ(quantized->pages(), reference->pages() - (reference->data_pages().size() - quantized->data_pages().size()));
    EXPECT_EQ((quantized->subspace() != nullptr), format.method != KvMethod::kKivi);
    EXPECT_TRUE(AllEqual(QuantizedContents(*quantized, shape), QuantizedContents(*reference, shape)));
  }
  ASSERT_TRUE((*chunked)->Reserve(total).ok());
  for (int64_t p = prompt; p < total; ++p) {
    const std::vector<at::Tensor> a = Step(*manager, **one_shot, in, p, 1), b = Step(*manager, **chunked, in, p, 1);
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      ASSERT_TRUE(at::equal(a[l], b[l])) << "decode position " << p << " layer " << l;
    }
  }
  if (quantized) {
    EXPECT_TRUE(AllEqual(QuantizedContents(*quantized, shape),
                         QuantizedContents(*dynamic_cast<QuantizedSequenceCache*>(one_shot->get()), shape)));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, ChunkedPrefillTest,
                         ::testing::Combine(::testing::Values(ChunkCase{KvMethod::kFp16, 16, 32},
                                                              ChunkCase{KvMethod::kKivi, 2, 32},
                                                              ChunkCase{KvMethod::kKivi, 4, 16},
                                                              ChunkCase{KvMethod::kSquatPre, 2, 32},
                                                              ChunkCase{KvMethod::kSquatPre, 4, 16},
                                                              ChunkCase{KvMethod::kSquatPost, 2, 16},
                                                              ChunkCase{KvMethod::kSquatPost, 4, 32}),
                                            ::testing::Bool()),
                         ChunkCaseName);

// A quantized cache misused during and after the prompt.
TEST_F(WindowStateTest, PromptChunksAndDecodeAreChecked) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 30);
  ASSERT_TRUE(manager);
  for (const KvFormat& format : {Fp16(), Quantized(KvMethod::kSquatPost, 2, 2, 32, 32)}) {
    SCOPED_TRACE(KvMethodName(format.method));
    auto seq = manager->NewSequence(format, 60);
    ASSERT_TRUE(seq.ok());
    const RunInputs in = RandomInputs(shape, 60);
    Step(*manager, **seq, in, 0, 7, false);
    Step(*manager, **seq, in, 7, 1, false);  // a one-token chunk is still the prompt
    Step(*manager, **seq, in, 8, 30, true);
    EXPECT_EQ((*seq)->length(), 38);
    if (IsQuantized(format.method)) {
      EXPECT_THROW(Step(*manager, **seq, in, 38, 3), c10::Error);  // decode takes one token
    } else {
      Step(*manager, **seq, in, 38, 3);  // fp16 appends several tokens at any time
    }
    const int64_t length = (*seq)->length();
    EXPECT_THROW(Step(*manager, **seq, in, length, 1, /*prompt_complete=*/false), c10::Error);  // the prompt ended
  }
}

// ---- preempt and recompute with the first run's subspace ----

class RecomputeTest : public SeededTest, public ::testing::WithParamInterface<ChunkParam> {};

// Prefills [0, tokens) in random chunks, growing the reservation before each one.
void ChunkedPrefill(KvCacheManager& manager, SequenceKvCache& cache, const RunInputs& in, int64_t tokens,
                    std::mt19937& rng) {
  int64_t done = 0;
  for (int64_t n : RandomChunks(rng, tokens)) {
    ASSERT_TRUE(cache.Reserve(done + n).ok());
    Step(manager, cache, in, done, n, done + n == tokens);
    done += n;
  }
}

TEST_P(RecomputeTest, ReusedSubspaceReproducesTheUninterruptedRun) {
  SCOPED_TRACE(SeedNote());
  at::Device device = at::kCPU;
  if (!TestDevice(GetParam(), &device)) GTEST_SKIP() << "no CUDA device";
  const KvFormat format = FormatOf(std::get<0>(GetParam()));
  const KvModelShape shape = OnDevice(SmallShape(), device);
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 120);
  ASSERT_TRUE(manager);
  const int64_t prompt = 40 + rng_() % 60, before = 5 + rng_() % 60, after = 40;
  const int64_t total = prompt + before + after;
  const RunInputs in = ToDevice(RandomInputs(SmallShape(), total), device);

  // The uninterrupted run, and an identical one that is preempted after `before` tokens.
  auto run = manager->NewSequence(format, total);
  auto preempted = manager->NewSequence(format, prompt);
  ASSERT_TRUE(run.ok() && preempted.ok());
  Step(*manager, **run, in, 0, prompt);
  ChunkedPrefill(*manager, **preempted, in, prompt, rng_);
  ASSERT_TRUE((*preempted)->Reserve(prompt + before).ok());
  for (int64_t p = prompt; p < prompt + before; ++p) {
    Step(*manager, **run, in, p, 1);
    Step(*manager, **preempted, in, p, 1);
  }
  const std::shared_ptr<const SquatSubspace> subspace = (*preempted)->subspace();
  EXPECT_EQ(subspace != nullptr, HasSquatState(format.method));
  const ResumeState kept = manager->Preempt(std::move(*preempted));
  // The kept subspace holds its pages, and only those, for the recomputation.
  EXPECT_EQ(kept.pages(), subspace ? subspace->pages() : 0);
  EXPECT_EQ(manager->stats().used_pages, (*run)->pages() + kept.pages());
  // Which tokens a recomputation prefills: all for fp16, the original prompt otherwise.
  EXPECT_EQ(kept.RecomputePrefill(prompt, prompt + before), IsQuantized(format.method) ? prompt : prompt + before);

  auto recomputed = manager->NewSequence(format, 1 + rng_() % 20, &kept);
  ASSERT_TRUE(recomputed.ok()) << recomputed.status();
  // Prompt and generated tokens come back as one longer prompt.
  ChunkedPrefill(*manager, **recomputed, in, prompt + before, rng_);
  EXPECT_EQ((*recomputed)->subspace(), subspace);
  EXPECT_EQ(manager->stats().used_pages, (*run)->pages() + (*recomputed)->pages());
  ASSERT_TRUE((*recomputed)->Reserve(total).ok());
  for (int64_t p = prompt + before; p < total; ++p) {
    const std::vector<at::Tensor> a = Step(*manager, **run, in, p, 1), b = Step(*manager, **recomputed, in, p, 1);
    for (int64_t l = 0; l < shape.num_layers; ++l) {
      ASSERT_LT(MaxAbsDiff(a[l], b[l]), 1e-4) << "decode position " << p << " layer " << l;
    }
  }
  auto* original = dynamic_cast<QuantizedSequenceCache*>(run->get());
  if (!original) return;  // fp16: outputs only
  auto* again = dynamic_cast<QuantizedSequenceCache*>(recomputed->get());
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(AllEqual(QuantizedContents(*again, shape), QuantizedContents(*original, shape)));

  if (!HasSquatState(format.method)) return;
  // Without the kept subspace, the longer prompt builds a different one: the codes show it.
  auto fresh = manager->NewSequence(format, total);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  Step(*manager, **fresh, in, 0, prompt + before);
  for (int64_t p = prompt + before; p < total; ++p) Step(*manager, **fresh, in, p, 1);
  EXPECT_FALSE(AllEqual(QuantizedContents(*dynamic_cast<QuantizedSequenceCache*>(fresh->get()), shape),
                        QuantizedContents(*original, shape)));
}

INSTANTIATE_TEST_SUITE_P(Formats, RecomputeTest,
                         ::testing::Combine(::testing::Values(ChunkCase{KvMethod::kFp16, 16, 32},
                                                              ChunkCase{KvMethod::kKivi, 2, 32},
                                                              ChunkCase{KvMethod::kSquatPre, 2, 32},
                                                              ChunkCase{KvMethod::kSquatPre, 4, 16},
                                                              ChunkCase{KvMethod::kSquatPost, 2, 16}),
                                            ::testing::Bool()),
                         ChunkCaseName);

TEST_F(KvPoolTest, ReusedSubspaceMustMatch) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  const KvFormat format = Quantized(KvMethod::kSquatPre, 2, 2, 32, 32);
  auto manager = MakeManager(shape, format, 40);
  auto other_manager = MakeManager(shape, format, 40);
  ASSERT_TRUE(manager && other_manager);
  auto seq = manager->NewSequence(format, 40);
  ASSERT_TRUE(seq.ok());
  const RunInputs in = RandomInputs(shape, 40);
  Step(*manager, **seq, in, 0, 20, false);
  EXPECT_EQ((*seq)->subspace(), nullptr);
  Step(*manager, **seq, in, 20, 5);
  ASSERT_NE((*seq)->subspace(), nullptr);
  const ResumeState subspace = manager->Preempt(std::move(*seq));
  ASSERT_GT(subspace.pages(), 0);

  // squat-post quantizes with the same (g, r, lambda): it may reuse a squat subspace.
  KvFormat post = format;
  post.method = KvMethod::kSquatPost;
  EXPECT_TRUE(manager->NewSequence(post, 10, &subspace).ok());
  KvFormat other_lambda = format;
  other_lambda.lambda *= 2;
  KvFormat other_rank = format;
  other_rank.subspace_dim += 1;
  KvFormat other_block = format;
  other_block.block_size = 16;
  for (const KvFormat& bad : {other_lambda, other_rank, other_block, Quantized(KvMethod::kKivi, 2, 2, 32, 32), Fp16()}) {
    const PoolStats before = manager->stats();
    auto refused = manager->NewSequence(bad, 10, &subspace);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    EXPECT_EQ(manager->stats().used_pages, before.used_pages);
  }
  auto elsewhere = other_manager->NewSequence(format, 10, &subspace);
  ASSERT_FALSE(elsewhere.ok());
  EXPECT_EQ(elsewhere.status().code(), absl::StatusCode::kInvalidArgument) << elsewhere.status();
  // kivi has none.
  auto kivi = manager->NewSequence(Quantized(KvMethod::kKivi, 2, 2, 32, 32), 10);
  ASSERT_TRUE(kivi.ok());
  Step(*manager, **kivi, in, 0, 10);
  EXPECT_EQ((*kivi)->subspace(), nullptr);
}

// Random lifecycles (chunked prompts, decode steps, reservation growth, preemption with kept
// subspaces and their reuse): the pool's used pages always equal what the sequences, the kept
// subspaces and the manager's shared subspace hold, and all of it comes back.
TEST_F(KvPoolTest, LifecyclesKeepAccountingExact) {
  SCOPED_TRACE(SeedNote());
  const KvModelShape shape = SmallShape();
  auto manager = MakeManager(shape, Quantized(KvMethod::kSquatPre, 2, 2, 32, 32), 60);
  ASSERT_TRUE(manager);
  const int64_t page_bytes = manager->stats().page_bytes;
  KvFormat shared = Quantized(KvMethod::kSquatPre, 2, 2, 32, 32);
  shared.shared_subspace = true;
  const std::vector<KvFormat> formats = {Fp16(), Quantized(KvMethod::kKivi, 2, 2, 32, 32),
                                         Quantized(KvMethod::kSquatPre, 2, 2, 32, 32),
                                         Quantized(KvMethod::kSquatPost, 4, 2, 16, 32), shared};
  const int64_t max_total = 200;
  struct Live {
    std::unique_ptr<SequenceKvCache> cache;
    RunInputs in;
    int64_t prompt;
  };
  std::vector<Live> live;
  std::vector<ResumeState> kept;
  int64_t shared_pages = 0;
  int created = 0, exhausted = 0, grown = 0, refused_growth = 0, completed = 0;

  auto expected_used = [&] {
    int64_t held = shared_pages;
    for (const Live& s : live) held += s.cache->pages();
    for (const ResumeState& k : kept) held += k.pages();
    return held;
  };
  for (int i = 0; i < 300; ++i) {
    const int op = static_cast<int>(rng_() % 10);
    if (op < 3 || live.empty()) {  // start a sequence, sometimes from a kept subspace
      KvFormat format = formats[rng_() % formats.size()];
      const ResumeState* reuse = nullptr;
      if (!kept.empty() && rng_() % 2 == 0) {
        format = Quantized(rng_() % 2 ? KvMethod::kSquatPre : KvMethod::kSquatPost, 2, 2, 32, 32);
        reuse = &kept.back();
      }
      const int64_t prompt = 1 + rng_() % 120;
      const PoolStats before = manager->stats();
      auto seq = manager->NewSequence(format, 1 + rng_() % prompt, reuse);
      if (!seq.ok()) {
        ASSERT_EQ(seq.status().code(), absl::StatusCode::kResourceExhausted) << seq.status();
        ++exhausted;
        ASSERT_EQ(manager->stats().used_pages, before.used_pages);
      } else {
        ++created;
        if (reuse) kept.pop_back();  // now held (and counted) by the sequence
        if (format.shared_subspace && shared_pages == 0) shared_pages = SquatStatePages(shape, format, page_bytes);
        live.push_back({*std::move(seq), RandomInputs(shape, max_total), prompt});
      }
    } else if (op < 8) {  // advance one sequence by a prompt chunk or a decode step
      Live& s = live[rng_() % live.size()];
      const int64_t length = s.cache->length();
      const bool in_prompt = length < s.prompt;
      const int64_t n = in_prompt ? std::min<int64_t>(1 + rng_() % 40, s.prompt - length) : 1;
      if (length + n > max_total) continue;
      const int64_t pages_before = s.cache->pages(), used_before = manager->stats().used_pages;
      if (length + n > s.cache->reserved_tokens()) {
        // Grow by a random margin; on failure nothing changes.
        const int64_t want = std::min<int64_t>(max_total, length + n + rng_() % 30);
        const absl::Status st = s.cache->Reserve(want);
        if (!st.ok()) {
          ASSERT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
          ASSERT_EQ(s.cache->pages(), pages_before);
          ASSERT_EQ(manager->stats().used_pages, used_before);
          ++refused_growth;
          continue;
        }
        ++grown;
        ASSERT_EQ(s.cache->reserved_tokens(), want);
        ASSERT_EQ(manager->stats().used_pages - used_before, s.cache->pages() - pages_before);
      }
      const bool completes = in_prompt && length + n == s.prompt;
      Step(*manager, *s.cache, s.in, length, n, !in_prompt || completes);
      completed += completes;
      if (completes) {
        if (auto* q = dynamic_cast<QuantizedSequenceCache*>(s.cache.get())) {
          ASSERT_EQ(q->staging_pages(), 0);
        }
      }
    } else {  // end a sequence; a squat one may be preempted (its subspace kept for later)
      const size_t victim = rng_() % live.size();
      const bool keep = live[victim].cache->subspace() && !live[victim].cache->format().shared_subspace;
      ResumeState resume = manager->Preempt(std::move(live[victim].cache));
      live.erase(live.begin() + victim);
      if (keep) kept.push_back(std::move(resume));
    }
    ASSERT_EQ(manager->stats().used_pages, expected_used()) << "operation " << i;
    ASSERT_LE(manager->stats().used_pages, manager->stats().total_pages);
  }
  EXPECT_GT(created, 20);
  EXPECT_GT(completed, 10);
  EXPECT_GT(grown, 10);
  EXPECT_GT(exhausted + refused_growth, 0);  // the pool was full at times
  live.clear();
  kept.clear();
  EXPECT_EQ(manager->stats().used_pages, shared_pages);

  // One scripted preemption: the kept subspace alone, then inside its recomputed sequence.
  const KvFormat own = Quantized(KvMethod::kSquatPost, 2, 2, 32, 32);
  auto first = manager->NewSequence(own, 40);
  ASSERT_TRUE(first.ok());
  const RunInputs in = RandomInputs(shape, 40);
  Step(*manager, **first, in, 0, 40);
  ResumeState resume = manager->Preempt(std::move(*first));
  ASSERT_GT(resume.pages(), 0);
  EXPECT_EQ(manager->stats().used_pages, shared_pages + resume.pages());
  auto again = manager->NewSequence(own, 10, &resume);
  ASSERT_TRUE(again.ok());
  Step(*manager, **again, in, 0, 10, false);
  EXPECT_EQ(manager->stats().used_pages, shared_pages + (*again)->pages());  // counted there now
  resume.Release();
  EXPECT_EQ(manager->stats().used_pages, shared_pages + (*again)->pages());
  again->reset();
  EXPECT_EQ(manager->stats().used_pages, shared_pages);
}

}  // namespace
}  // namespace squat::kv
