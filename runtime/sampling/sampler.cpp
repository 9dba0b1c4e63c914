#include "runtime/sampling/sampler.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace squat {
namespace {

// Like vLLM, temperatures this small are greedy: dividing by them only overflows, and the
// distribution they describe is argmax anyway.
constexpr float kGreedyTemperature = 1e-5f;

// Top-k / top-p only need the head of the descending order. A histogram of the weights
// (kBucketsPerOctave buckets per factor of 2) tells how deep that head goes, so only those
// tokens are collected and sorted instead of the whole vocabulary.
constexpr int kBucketShift = 21;  // keep the top 2 of float's 23 mantissa bits: 4 per octave
constexpr int kBuckets = 512;     // 128 octaves; anything smaller shares the last bucket

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

absl::Status OutOfRange(absl::string_view field, absl::string_view allowed, double value) {
  return absl::InvalidArgumentError(
      absl::StrCat("sampling parameter ", field, " must be ", allowed, ", got ", value));
}

bool InClosedRange(double value, double low, double high) {
  return value >= low && value <= high;  // false for NaN
}

// Uniform in [0, 1) from the top 53 bits: the same on every standard library, unlike
// std::uniform_real_distribution.
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

void MarkSeen(std::vector<uint8_t>& seen, int32_t token) {
  if (token < 0) return;
  if (static_cast<size_t>(token) >= seen.size()) seen.resize(static_cast<size_t>(token) + 1, 0);
  seen[token] = 1;
}

// Bucket of a weight in (0, 1]: positive floats order like their bit patterns, so the distance
// from 1.0's bits is monotone (larger weight, lower bucket; equal weights share one).
int Bucket(float weight) {
  uint32_t bits;
  std::memcpy(&bits, &weight, sizeof(bits));
  const uint32_t distance = (0x3F800000u - bits) >> kBucketShift;
  return distance < static_cast<uint32_t>(kBuckets) ? static_cast<int>(distance) : kBuckets - 1;
}

// Draws from `weights` (unnormalised, the top token has weight 1, masked tokens 0) after
// top-k, top-p and min-p truncation. `logits` give the order (ties: lower id ranks higher).
int32_t DrawTruncated(const SamplingParams& params, const float* logits,
                      const std::vector<float>& weights, double total, std::mt19937_64& rng) {
  const size_t vocab = weights.size();
  const bool top_k_active = params.top_k > 0 && static_cast<size_t>(params.top_k) < vocab;
  const bool top_p_active = params.top_p < 1.0f;
  const float min_weight = params.min_p;  // prob >= min_p * max prob <=> weight >= min_p

  if (!top_k_active && !top_p_active) {
    // No ordering needed: one scan over the tokens that pass min-p.
    double kept_total = 0.0;
    for (size_t i = 0; i < vocab; ++i)
      if (weights[i] >= min_weight) kept_total += weights[i];
    const double target = Uniform01(rng) * kept_total;
    double cumulative = 0.0;
    int32_t last_kept = 0;
    for (size_t i = 0; i < vocab; ++i) {
      if (weights[i] <= 0.0f || weights[i] < min_weight) continue;
      cumulative += weights[i];
      last_kept = static_cast<int32_t>(i);
      if (cumulative > target) return last_kept;
    }
    return last_kept;  // rounding left target at the very end
  }

  // How many buckets the head spans: enough tokens for top-k, else enough mass for top-p.
  std::array<int64_t, kBuckets> bucket_counts{};
  std::array<double, kBuckets> bucket_masses{};
  for (size_t i = 0; i < vocab; ++i) {
    if (weights[i] <= 0.0f) continue;
    const int bucket = Bucket(weights[i]);
    ++bucket_counts[bucket];
    bucket_masses[bucket] += weights[i];
  }
  int last_bucket = kBuckets - 1;
  if (top_k_active) {
    int64_t count = 0;
    for (int b = 0; b < kBuckets; ++b) {
      count += bucket_counts[b];
      if (count >= params.top_k) {
        last_bucket = b;
        break;
      }
    }
  } else {
    const double target = static_cast<double>(params.top_p) * total;
    double mass = 0.0;
    for (int b = 0; b < kBuckets; ++b) {
      mass += bucket_masses[b];
      if (mass >= target) {
        // One bucket more absorbs rounding between this sum and the sorted running sum.
        last_bucket = std::min(b + 1, kBuckets - 1);
        break;
      }
    }
  }

  // Reused across calls: the engine thread samples every step, and the vocabulary is large.
  thread_local std::vector<int32_t> pool;
  pool.clear();
  for (size_t i = 0; i < vocab; ++i) {
    if (weights[i] > 0.0f && Bucket(weights[i]) <= last_bucket)
      pool.push_back(static_cast<int32_t>(i));
  }

  auto ranks_higher = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  // Top-p is measured against the distribution renormalised after top-k.
  double mass = total;
  if (top_k_active) {
    if (static_cast<size_t>(params.top_k) < pool.size()) {
      std::nth_element(pool.begin(), pool.begin() + params.top_k, pool.end(), ranks_higher);
      pool.resize(params.top_k);
    }
    mass = 0.0;
    for (int32_t token : pool) mass += weights[token];
  }
  // Min-p, top-k and top-p each keep a prefix of the descending order, so min-p can go first:
  // it only removes a tail that top-p's running sum would reach last.
  if (min_weight > 0.0f) {
    pool.erase(std::remove_if(pool.begin(), pool.end(),
                              [&](int32_t token) { return weights[token] < min_weight; }),
               pool.end());
  }
  if (top_p_active) {
    std::sort(pool.begin(), pool.end(), ranks_higher);
    const double target = static_cast<double>(params.top_p) * mass;
    double cumulative = 0.0;
    for (size_t i = 0; i < pool.size(); ++i) {
      cumulative += weights[pool[i]];
      if (cumulative >= target) {
        pool.resize(i + 1);
        break;
      }
    }
  }

  double kept_total = 0.0;
  for (int32_t token : pool) kept_total += weights[token];
  const double target = Uniform01(rng) * kept_total;
  double cumulative = 0.0;
  for (int32_t token : pool) {
    cumulative += weights[token];
    if (cumulative > target) return token;
  }
  return pool.back();  // pool holds at least the top token (weight 1)
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (params.max_tokens < 0) return OutOfRange("max_tokens", ">= 0 (0 = the engine default)", params.max_tokens);
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f)
    return OutOfRange("temperature", "a finite number >= 0 (0 = greedy)", params.temperature);
  if (params.top_k < 0) return OutOfRange("top_k", ">= 0 (0 = disabled)", params.top_k);
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f))
    return OutOfRange("top_p", "in (0, 1] (1 = disabled)", params.top_p);
  if (!InClosedRange(params.min_p, 0.0, 1.0))
    return OutOfRange("min_p", "in [0, 1] (0 = disabled)", params.min_p);
  if (!std::isfinite(params.repetition_penalty) || !(params.repetition_penalty > 0.0f))
    return OutOfRange("repetition_penalty", "a finite number > 0 (1 = disabled)",
                      params.repetition_penalty);
  if (!InClosedRange(params.presence_penalty, -2.0, 2.0))
    return OutOfRange("presence_penalty", "in [-2, 2]", params.presence_penalty);
  if (!InClosedRange(params.frequency_penalty, -2.0, 2.0))
    return OutOfRange("frequency_penalty", "in [-2, 2]", params.frequency_penalty);
  if (!InClosedRange(params.logprobs, 0, 20))
    return OutOfRange("logprobs", "in [0, 20]", params.logprobs);
  if (params.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling parameter stop has ", params.stop.size(),
                                                   " strings; at most ", kMaxStopStrings, " are allowed"));
  }
  for (size_t i = 0; i < params.stop.size(); ++i) {
    if (params.stop[i].empty())
      return absl::InvalidArgumentError(
          absl::StrCat("sampling parameter stop[", i, "] must be a non-empty string"));
    if (params.stop[i].size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling parameter stop[", i, "] has ", params.stop[i].size(),
                                                     " bytes; at most ", kMaxStopStringBytes, " are allowed"));
    }
  }
  if (params.stop_token_ids.size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("sampling parameter stop_token_ids has ",
                                                   params.stop_token_ids.size(), " ids; at most ",
                                                   kMaxStopTokenIds, " are allowed"));
  }
  for (size_t i = 0; i < params.stop_token_ids.size(); ++i) {
    if (params.stop_token_ids[i] < 0)
      return OutOfRange(absl::StrCat("stop_token_ids[", i, "]"), ">= 0",
                        params.stop_token_ids[i]);
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt_tokens,
                 uint64_t fallback_seed)
    : params_(params), rng_(params.has_seed ? params.seed : fallback_seed) {
  // The seen set only feeds the repetition penalty; skip its memory when that is off.
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t token : prompt_tokens) MarkSeen(seen_, token);
  }
}

void Sampler::ApplyPenalties(float* logits, int32_t vocab_size) const {
  if (params_.repetition_penalty != 1.0f) {
    const float penalty = params_.repetition_penalty;
    const size_t limit = std::min(seen_.size(), static_cast<size_t>(vocab_size));
    for (size_t i = 0; i < limit; ++i) {
      if (!seen_[i]) continue;
      // Dividing a negative logit would raise it, so those are multiplied instead.
      logits[i] = logits[i] > 0.0f ? logits[i] / penalty : logits[i] * penalty;
    }
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    for (const auto& [token, count] : output_counts_) {
      if (token < 0 || token >= vocab_size) continue;
      logits[token] -= static_cast<float>(count) * params_.frequency_penalty +
                       (count > 0 ? params_.presence_penalty : 0.0f);
    }
  }
}

SampledToken Sampler::Sample(float* logits, int32_t vocab_size) {
  SampledToken result;
  if (vocab_size <= 0) return result;  // nothing to choose from: token_id stays -1

  ApplyPenalties(logits, vocab_size);

  // NaN counts as masked (-inf); +inf becomes the largest float so that softmax stays defined
  // (all +inf tokens tie for the maximum).
  float max_logit = kNegInf;
  int32_t argmax = 0;
  for (int32_t i = 0; i < vocab_size; ++i) {
    float& logit = logits[i];
    if (std::isnan(logit)) {
      logit = kNegInf;
    } else if (logit == std::numeric_limits<float>::infinity()) {
      logit = std::numeric_limits<float>::max();
    }
    if (logit > max_logit) {  // strict: ties keep the lowest id
      max_logit = logit;
      argmax = i;
    }
  }

  if (max_logit == kNegInf) {
    // Every token is masked, so there is no distribution to draw from. Token 0 keeps the
    // sequence going deterministically; its logprob is that of the uniform limit.
    result.token_id = 0;
    result.logprob = static_cast<float>(-std::log(static_cast<double>(vocab_size)));
  } else if (params_.temperature < kGreedyTemperature) {
    // Greedy: argmax, with the logprob at temperature 1.
    double total = 0.0;
    for (int32_t i = 0; i < vocab_size; ++i) total += std::exp(logits[i] - max_logit);
    result.token_id = argmax;
    result.logprob = static_cast<float>(-std::log(total));
  } else {
    // Scaling happens in double on (logit - max), so small temperatures cannot overflow; the
    // exponentials are float (ample for sampling, and faster), their sum double.
    const double inverse_temperature = 1.0 / static_cast<double>(params_.temperature);
    thread_local std::vector<float> weights;  // reused: one vocabulary-sized buffer per thread
    weights.resize(vocab_size);
    double total = 0.0;
    for (int32_t i = 0; i < vocab_size; ++i) {
      const double scaled = (static_cast<double>(logits[i]) - max_logit) * inverse_temperature;
      weights[i] = std::exp(static_cast<float>(scaled));
      total += weights[i];
    }
    result.token_id = DrawTruncated(params_, logits, weights, total, rng_);
    const double scaled =
        (static_cast<double>(logits[result.token_id]) - max_logit) * inverse_temperature;
    result.logprob = static_cast<float>(scaled - std::log(total));
  }

  ++output_counts_[result.token_id];
  if (params_.repetition_penalty != 1.0f) MarkSeen(seen_, result.token_id);
  return result;
}

bool Sampler::IsPlainGreedy() const {
  return params_.temperature < kGreedyTemperature && params_.repetition_penalty == 1.0f &&
         params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f &&
         params_.logprobs <= 0;
}

SampledToken Sampler::AcceptArgmax(int32_t token_id) {
  SampledToken result;
  result.token_id = token_id;
  ++output_counts_[token_id];
  return result;
}

}  // namespace squat
