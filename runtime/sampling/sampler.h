// Token sampling from one row of logits: greedy, temperature, top-k, top-p, min-p and
// repetition / presence / frequency penalties, reproducible per seed.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"

namespace squat {

struct SamplingParams {
  int32_t max_tokens = 0;           // 0: the engine's default_max_tokens
  float temperature = 1.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = disabled
  float top_p = 1.0f;               // 1 = disabled
  float min_p = 0.0f;               // 0 = disabled
  float repetition_penalty = 1.0f;  // 1 = disabled; applies to prompt and output tokens
  float presence_penalty = 0.0f;    // applies to output tokens only
  float frequency_penalty = 0.0f;   // applies to output tokens only
  bool has_seed = false;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = 0;  // > 0: report the sampled token's log-probability
};

// Per-request bounds on what stop matching may cost every decoded token.
inline constexpr size_t kMaxStopStrings = 64;
inline constexpr size_t kMaxStopStringBytes = 1024;
inline constexpr size_t kMaxStopTokenIds = 1024;

// Checks ranges (max_tokens >= 0, temperature >= 0, 0 < top_p <= 1, ...) and the stop limits
// above; INVALID_ARGUMENT naming the field. The engine's max_tokens_limit is the engine's.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct SampledToken {
  int32_t token_id = -1;
  float logprob = 0.0f;  // log-softmax of the penalised, temperature-scaled logits
};

// One sampler per sequence: it owns the sequence's RNG and token counts.
class Sampler {
 public:
  // prompt_tokens seed the repetition-penalty set. seed is used when params.has_seed is
  // false (the engine passes a fresh random value then).
  Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt_tokens,
          uint64_t fallback_seed);

  // logits: vocab_size floats (modified in place by penalties / scaling).
  SampledToken Sample(float* logits, int32_t vocab_size);
  // True when Sample would be a plain argmax of the raw logits (greedy, no penalties, no
  // logprob wanted): the engine then takes the argmax on the device and calls AcceptArgmax.
  bool IsPlainGreedy() const;
  // Records a token chosen outside Sample (the device argmax of IsPlainGreedy sequences).
  SampledToken AcceptArgmax(int32_t token_id);
  // Record a generated token (called by Sample itself; exposed for tests).
  const std::unordered_map<int32_t, int32_t>& output_counts() const { return output_counts_; }

 private:
  void ApplyPenalties(float* logits, int32_t vocab_size) const;
  SamplingParams params_;
  std::vector<uint8_t> seen_;  // prompt or output token seen (repetition penalty), by id
  std::unordered_map<int32_t, int32_t> output_counts_;
  std::mt19937_64 rng_;
};

}  // namespace squat
