// The arithmetic of a throughput sweep, kept apart from the engine so it can be tested: how many
// sequences a pool holds, how many tokens a point must generate for a steady decode window, and
// how long a point is predicted to take (to skip points that would overrun the time budget).
#pragma once

#include <cstdint>

namespace squat::bench {

// One KV format as the engine describes it (ModelDescription::kv_formats).
struct FormatCapacity {
  double bytes_per_token = 0;   // codes + metadata, all layers, keys + values
  int64_t capacity_tokens = 0;  // tokens one sequence alone can hold (its residual/state included)
};

// Tokens a sequence of prompt_tokens + gen_tokens holds in the KV pool at its largest: the last
// sampled token finishes the request before any step writes its keys and values.
int64_t StoredTokens(int64_t prompt_tokens, int64_t gen_tokens);

// capacity_tokens / tokens_per_sequence: what GetModelInfo's figure suggests.
int64_t NaiveMaxSequences(const FormatCapacity& format, int64_t tokens_per_sequence);

// Sequences of tokens_per_sequence tokens that fit at once: the pool's pages over each sequence's
// pages, which are its tokens' bytes rounded up to whole pages plus its fixed part (residual
// window, SQuat state), the fixed part being what the pool holds beyond capacity_tokens x
// bytes_per_token for one sequence alone. Keeps the 1 % of the pool the scheduler leaves free.
// Valid for the engine's default format (its pages are sized for it); an estimate that errs
// low for quantized formats (their last R tokens stay in the residual window).
int64_t EstimateMaxSequences(const FormatCapacity& format, int64_t page_bytes, int64_t total_pages,
                             int64_t tokens_per_sequence);

struct StepLimits {
  int64_t max_batched_tokens = 2048;  // rows per engine step
  int64_t max_prefill_chunk = 512;    // prompt rows of one sequence per step
};

// Steps until every prompt of a batch submitted at once is in: an upper bound (every step may
// also feed one row per decoding sequence).
int64_t PrefillSteps(int64_t batch, int64_t prompt_tokens, const StepLimits& limits);

// Tokens each sequence generates: gen_tokens, or more when steady_window > 0 so that the first
// sequence (which starts decoding while the others still prefill) is still running steady_window
// steps after the last prompt is in. Never past max_model_len.
int64_t GenTokensFor(int64_t batch, int64_t prompt_tokens, int64_t gen_tokens, int64_t steady_window,
                     const StepLimits& limits, int64_t max_model_len);

// What a finished point showed, for predicting the next one.
struct PointObservation {
  int64_t batch = 0;
  int64_t prompt_tokens = 0;
  int64_t gen_tokens = 0;
  double prefill_seconds = 0;  // until every sequence had its first token
  double step_seconds = 0;     // a decode step at this batch
};

struct CostModel {
  int64_t weight_bytes = 0;    // read once per step
  double kv_bytes_per_token = 0;  // read per token of context per sequence per step
};

// Seconds a point of (batch, prompt, gen) should take, from an observed point: prefill at the
// observed tokens/s (slower per token for longer prompts: attention grows with the prefix), and
// decode steps scaled like bytes read (weights + batch x context x KV bytes), which bounds a
// step at any batch. With a 25 % margin.
double PredictPointSeconds(const PointObservation& seen, const CostModel& model, int64_t batch,
                           int64_t prompt_tokens, int64_t gen_tokens);

}  // namespace squat::bench
