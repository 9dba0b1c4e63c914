// Steps that mix KV formats, prefill chunks and decode rows (tests/step_runner_test.cpp on the
// CPU, tests/gpu_decode_test.cpp on CUDA): each sequence's greedy tokens when it shares steps
// with the others, against the tokens it gets alone.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcache/attention_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/standalone_cache.h"
#include "runtime/model/llama_model.h"
#include "runtime/model/step_runner.h"

namespace squat {

inline kv::KvFormat MixFormat(kv::KvMethod method, int k_bits, int v_bits, int64_t head_dim) {
  kv::KvFormat f;
  f.method = method;
  f.k_bits = method == kv::KvMethod::kFp16 ? 16 : k_bits;
  f.v_bits = method == kv::KvMethod::kFp16 ? 16 : v_bits;
  f.group_size = 32;
  f.residual_length = 32;
  f.block_size = head_dim / 2;
  f.subspace_dim = 16;
  f.lambda = 0.05;  // strong enough that the compensation changes codes
  return f;
}

// Every method, both bit widths, and mixed K/V bits.
inline std::vector<kv::KvFormat> AllFormats(int64_t head_dim) {
  using M = kv::KvMethod;
  return {MixFormat(M::kFp16, 16, 16, head_dim),     MixFormat(M::kKivi, 2, 2, head_dim),
          MixFormat(M::kKivi, 4, 4, head_dim),       MixFormat(M::kSquatPre, 2, 2, head_dim),
          MixFormat(M::kSquatPre, 4, 4, head_dim),   MixFormat(M::kSquatPost, 2, 2, head_dim),
          MixFormat(M::kSquatPost, 4, 4, head_dim),  MixFormat(M::kSquatPre, 4, 2, head_dim)};
}

inline std::string Describe(const kv::KvFormat& f) {
  return std::string(kv::KvMethodName(f.method)) + " K" + std::to_string(f.k_bits) + "V" + std::to_string(f.v_bits);
}

struct MixSequence {
  kv::KvFormat format;
  std::vector<int32_t> prompt;
  int64_t join_step = 0;  // the step its first prompt chunk is in (mixed run)
  int64_t generate = 0;
};

// Greedy tokens and, per token, the top-two logit margin relative to the largest |logit|.
struct Greedy {
  std::vector<int32_t> tokens;
  std::vector<double> margins;
  at::Tensor first;  // float64 logits of the first token (the prompt's last row)
};

inline void TakeGreedy(const at::Tensor& row, Greedy* out) {
  const at::Tensor r = row.to(at::kCPU, at::kDouble);
  if (!out->first.defined()) out->first = r;
  const auto top = r.topk(2);
  out->tokens.push_back(static_cast<int32_t>(std::get<1>(top)[0].item<int64_t>()));
  out->margins.push_back((std::get<0>(top)[0] - std::get<0>(top)[1]).item<double>() /
                         std::max(1e-30, r.abs().max().item<double>()));
}

// Every sequence in one pool and one runner: each joins at its step, its prompt in chunks of
// up to `chunk` tokens, then one greedy token per step, so that steps mix formats, prefill
// chunks and decode rows. `backend` replaces the pool's own. Returns also how many steps mixed
// a prefill chunk with a decode row.
inline std::vector<Greedy> RunMixed(LlamaModel& model, kv::KvCacheManager& kv, const std::vector<MixSequence>& seqs,
                                    int64_t chunk, kv::AttentionBackend* backend, int* mixed_steps) {
  const size_t n = seqs.size();
  std::vector<std::unique_ptr<kv::SequenceKvCache>> caches(n);
  std::vector<Greedy> out(n);
  std::vector<std::vector<int32_t>> fed(n);  // tokens fed so far
  const int64_t rows = static_cast<int64_t>(n) * std::max<int64_t>(chunk, 1);  // a chunk each at most
  auto runner = StepRunner::Create(model, kv, rows, static_cast<int64_t>(n), backend);
  EXPECT_TRUE(runner.ok()) << runner.status();
  *mixed_steps = 0;
  for (int64_t step = 0;; ++step) {
    std::vector<StepEntry> entries;
    std::vector<size_t> members;
    std::vector<std::vector<int32_t>> feeds;
    feeds.reserve(n);
    bool prefill = false, decode = false;
    for (size_t i = 0; i < n; ++i) {
      const MixSequence& s = seqs[i];
      if (step < s.join_step || static_cast<int64_t>(out[i].tokens.size()) >= s.generate) continue;
      const int64_t done = static_cast<int64_t>(fed[i].size()), prompt = static_cast<int64_t>(s.prompt.size());
      StepEntry e;
      if (done < prompt) {
        if (!caches[i]) {
          auto cache = kv.NewSequence(s.format, prompt + s.generate);
          EXPECT_TRUE(cache.ok()) << cache.status();
          caches[i] = std::move(*cache);
        }
        const int64_t take = std::min(chunk, prompt - done);
        feeds.emplace_back(s.prompt.begin() + done, s.prompt.begin() + done + take);
        e.prompt_complete = done + take == prompt;
        e.logits = e.prompt_complete;
        prefill = true;
      } else {
        feeds.push_back({out[i].tokens.back()});
        decode = true;
      }
      e.cache = caches[i].get();
      e.tokens = feeds.back().data();
      e.num_tokens = static_cast<int64_t>(feeds.back().size());
      entries.push_back(e);
      members.push_back(i);
    }
    if (entries.empty()) break;
    *mixed_steps += prefill && decode;
    const at::Tensor logits = (*runner)->Run(entries);
    int64_t row = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      const size_t i = members[m];
      fed[i].insert(fed[i].end(), feeds[m].begin(), feeds[m].end());
      if (entries[m].logits) TakeGreedy(logits[row++], &out[i]);
    }
  }
  return out;
}

// One sequence alone: its prompt in one step, then one greedy token per step.
inline Greedy RunAlone(LlamaModel& model, kv::KvCacheManager& kv, const MixSequence& s, kv::AttentionBackend* backend) {
  const int64_t prompt = static_cast<int64_t>(s.prompt.size());
  auto cache = kv.NewSequence(s.format, prompt + s.generate);
  EXPECT_TRUE(cache.ok()) << cache.status();
  auto runner = StepRunner::Create(model, kv, prompt, 1, backend);
  EXPECT_TRUE(runner.ok()) << runner.status();
  Greedy out;
  std::vector<int32_t> feed = s.prompt;
  while (static_cast<int64_t>(out.tokens.size()) < s.generate) {
    StepEntry e;
    e.cache = cache->get();
    e.tokens = feed.data();
    e.num_tokens = static_cast<int64_t>(feed.size());
    TakeGreedy((*runner)->Run({e})[0], &out);
    feed = {out.tokens.back()};
  }
  return out;
}

// Mixed vs alone: the same tokens. The prompt's last row is full precision in every format,
// so the first token's logits must agree closely (float round-off only). After that a batch's
// GEMMs round differently from a single sequence's (BLAS and cuBLAS pick other kernels for
// other row counts), and where a quantizer input sits on a rounding tie (an fp16 scale or
// minimum, a code) the two runs store different codes for the rest of the sequence: measured
// on the CPU, one flush in which 6 fp16 key scales of layer 0 rounded the other way and 12 of
// 8192 codes differed, the logits then moving by ~1 where they had agreed to 1e-5. So where the
// runs pick different tokens the comparison of that sequence stops: a "tie" when the alone
// run's top two logits were within `tie` of each other (relative to the largest |logit|), a
// "flip" otherwise; measured with the CPU test: a flip in about 1 run in 40 (of 8 sequences),
// never two in one run.
struct TokenComparison {
  int ties = 0, flips = 0;
};
inline TokenComparison CompareTokens(const std::vector<MixSequence>& seqs, const std::vector<Greedy>& mixed,
                                     const std::vector<Greedy>& alone, double tie) {
  TokenComparison c;
  for (size_t i = 0; i < seqs.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i) + " (" + Describe(seqs[i].format) + ", prompt " +
                 std::to_string(seqs[i].prompt.size()) + ")");
    EXPECT_EQ(mixed[i].tokens.size(), alone[i].tokens.size());
    if (mixed[i].first.defined() && alone[i].first.defined()) {
      const double range = alone[i].first.abs().max().item<double>();
      EXPECT_LT((mixed[i].first - alone[i].first).abs().max().item<double>(), 1e-3 * range) << "first token's logits";
    }
    for (size_t t = 0; t < std::min(mixed[i].tokens.size(), alone[i].tokens.size()); ++t) {
      if (mixed[i].tokens[t] == alone[i].tokens[t]) continue;
      (alone[i].margins[t] < tie ? c.ties : c.flips) += 1;
      std::cout << Describe(seqs[i].format) << " sequence " << i << ": token " << t << " differs ("
                << mixed[i].tokens[t] << " vs " << alone[i].tokens[t] << ", margin " << alone[i].margins[t] << ")\n";
      break;
    }
  }
  return c;
}

// Sequences of every format with prompts of various lengths (some shorter than R = 32, some
// several groups long) joining over the first steps; each generates across a key flush.
inline std::vector<MixSequence> MixedWorkload(int64_t head_dim, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<MixSequence> seqs;
  const std::vector<kv::KvFormat> formats = AllFormats(head_dim);
  for (size_t i = 0; i < formats.size(); ++i) {
    MixSequence s;
    s.format = formats[i];
    const int64_t length = 3 + static_cast<int64_t>(rng() % 90);
    for (int64_t t = 0; t < length; ++t) s.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    s.join_step = static_cast<int64_t>(2 * i);
    s.generate = 36 + static_cast<int64_t>(rng() % 8);
    seqs.push_back(std::move(s));
  }
  return seqs;
}

// The mixed run against every sequence alone, on `model`'s device, in one pool.
inline void CheckMixedSteps(LlamaModel& model, uint32_t seed) {
  const int64_t d = model.config().head_dim;
  auto kv = kv::KvCacheManager::Create(model.kv_shape(), MixFormat(kv::KvMethod::kSquatPre, 2, 2, d), int64_t{64} << 20);
  ASSERT_TRUE(kv.ok()) << kv.status();
  const std::vector<MixSequence> seqs = MixedWorkload(d, model.config().vocab_size, seed);
  int mixed_steps = 0;
  const std::vector<Greedy> mixed = RunMixed(model, **kv, seqs, /*chunk=*/24, nullptr, &mixed_steps);
  std::vector<Greedy> alone;
  for (const MixSequence& s : seqs) alone.push_back(RunAlone(model, **kv, s, nullptr));
  EXPECT_GT(mixed_steps, 3) << "steps should mix prefill chunks and decode rows";
  const TokenComparison c = CompareTokens(seqs, mixed, alone, 2e-2);
  EXPECT_LE(c.flips, 1) << "more than one sequence took other codes (see CompareTokens)";
  EXPECT_LE(c.ties + c.flips, 2);
  EXPECT_EQ((*kv)->stats().used_pages, 0);  // every sequence gave its pages back
}

// fp16 stores the model's k_rot; squat (pre-RoPE) stores k and the backend rotates it with the
// same table when it attends. Until a key is quantized the two caches hold the same keys, so
// the logits must agree bit for bit (float32): a prefill in two chunks (the second attends over
// stored keys), then decode steps below R = 32 tokens.
inline void CheckPreRopeRotatesLikeTheModel(LlamaModel& model, uint32_t seed, const char* backend) {
  ASSERT_EQ(model.dtype(), at::kFloat);
  const int64_t d = model.config().head_dim;
  const std::vector<kv::KvFormat> formats = {MixFormat(kv::KvMethod::kFp16, 16, 16, d),
                                             MixFormat(kv::KvMethod::kSquatPre, 2, 2, d)};
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 31; ++i) tokens.push_back(static_cast<int32_t>(rng() % model.config().vocab_size));
  std::vector<std::vector<at::Tensor>> logits(2);
  for (size_t f = 0; f < formats.size(); ++f) {
    auto cache = kv::StandaloneCache::Create(model.kv_shape(), formats[f], 40);
    ASSERT_TRUE(cache.ok()) << cache.status();
    ASSERT_STREQ(cache->manager().backend().name(), backend);
    kv::SequenceKvCache& seq = **cache;
    auto step = [&](size_t from, size_t to, bool prompt_complete) {
      logits[f].push_back(ForwardSequence(model, cache->manager(), seq, {tokens.begin() + from, tokens.begin() + to},
                                          /*last_only=*/false, prompt_complete)
                              .cpu());
    };
    step(0, 11, false);
    step(11, 20, true);
    for (size_t t = 20; t < tokens.size(); ++t) step(t, t + 1, true);
    EXPECT_EQ(seq.length(), 31);
  }
  for (size_t i = 0; i < logits[0].size(); ++i) {
    EXPECT_TRUE(at::equal(logits[0][i], logits[1][i])) << "step " << i << ": max |diff| "
                                                       << (logits[0][i] - logits[1][i]).abs().max().item<double>();
  }
}

}  // namespace squat
