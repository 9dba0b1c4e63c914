#include "tools/bench/throughput_plan.h"

#include <algorithm>
#include <cmath>

namespace squat::bench {

int64_t StoredTokens(int64_t prompt_tokens, int64_t gen_tokens) {
  return prompt_tokens + std::max<int64_t>(0, gen_tokens - 1);
}

int64_t NaiveMaxSequences(const FormatCapacity& format, int64_t tokens_per_sequence) {
  if (tokens_per_sequence <= 0) return 0;
  return format.capacity_tokens / tokens_per_sequence;
}

int64_t EstimateMaxSequences(const FormatCapacity& format, int64_t page_bytes, int64_t total_pages,
                             int64_t tokens_per_sequence) {
  if (tokens_per_sequence <= 0 || format.bytes_per_token <= 0 || page_bytes <= 0 || total_pages <= 0) return 0;
  if (format.capacity_tokens < tokens_per_sequence) return 0;
  const double pool_bytes = static_cast<double>(page_bytes) * total_pages;
  const double fixed_pages = std::max(0.0, pool_bytes - format.capacity_tokens * format.bytes_per_token) / page_bytes;
  const double data_pages = std::ceil(tokens_per_sequence * format.bytes_per_token / page_bytes - 1e-9);
  const double usable = total_pages * 0.99;  // the scheduler keeps ~1 % free for growth
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(usable / (data_pages + fixed_pages))));
}

int64_t PrefillSteps(int64_t batch, int64_t prompt_tokens, const StepLimits& limits) {
  const int64_t prompt_rows_per_step = std::max<int64_t>(1, limits.max_batched_tokens - batch);
  const int64_t chunk = std::max<int64_t>(1, limits.max_prefill_chunk);
  // A step either fills its rows (at least max_batched_tokens - batch prompt rows), or it gives
  // every unfinished prompt a whole chunk: the first kind happens at most `full` times, the second
  // at most `chunked` times.
  const int64_t full = (batch * prompt_tokens + prompt_rows_per_step - 1) / prompt_rows_per_step;
  const int64_t chunked = (prompt_tokens + chunk - 1) / chunk;
  return full + chunked;
}

int64_t GenTokensFor(int64_t batch, int64_t prompt_tokens, int64_t gen_tokens, int64_t steady_window,
                     const StepLimits& limits, int64_t max_model_len) {
  int64_t gen = gen_tokens;
  if (steady_window > 0) gen = std::max(gen, PrefillSteps(batch, prompt_tokens, limits) + steady_window);
  if (max_model_len > 0) gen = std::min(gen, max_model_len - prompt_tokens);
  return std::max<int64_t>(1, gen);
}

double PredictPointSeconds(const PointObservation& seen, const CostModel& model, int64_t batch,
                           int64_t prompt_tokens, int64_t gen_tokens) {
  double prefill = 0;
  if (seen.prefill_seconds > 0 && seen.batch > 0 && seen.prompt_tokens > 0) {
    double tokens_per_s = seen.batch * seen.prompt_tokens / seen.prefill_seconds;
    if (prompt_tokens > seen.prompt_tokens) {
      tokens_per_s /= std::sqrt(static_cast<double>(prompt_tokens) / seen.prompt_tokens);
    }
    prefill = batch * prompt_tokens / tokens_per_s;
  }
  auto bytes_per_step = [&](int64_t b, int64_t prompt, int64_t gen) {
    return model.weight_bytes + b * (prompt + gen / 2.0) * model.kv_bytes_per_token;
  };
  const double seen_bytes = bytes_per_step(seen.batch, seen.prompt_tokens, seen.gen_tokens);
  const double step = seen_bytes > 0 ? seen.step_seconds * bytes_per_step(batch, prompt_tokens, gen_tokens) / seen_bytes
                                     : seen.step_seconds;
  return 1.25 * (prefill + gen_tokens * step) + 1.0;
}

}  // namespace squat::bench
