// One point of a throughput sweep: `batch` requests of random prompts submitted to the engine at
// once, drained by one polling thread that timestamps every token; the engine's per-step
// timings come through an EngineObserver.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/distribution.h"
#include "runtime/engine/engine.h"

namespace squat::bench {

using Clock = std::chrono::steady_clock;

struct StepRecord {
  Clock::time_point end;
  bool prefill = false;
  int32_t num_sequences = 0;
  int64_t num_tokens = 0;
  double duration_seconds = 0;
};

// Collects the engine's steps (called on the engine thread; Take() from another).
class StepRecorder : public EngineObserver {
 public:
  void OnStep(const StepInfo& step) override;
  void OnPreemptions(int64_t sequences) override;
  std::vector<StepRecord> Take();  // the steps since the last Take

 private:
  std::mutex mu_;
  std::vector<StepRecord> steps_;
};

struct PointSpec {
  int64_t batch = 1;
  int64_t prompt_tokens = 1;
  int64_t gen_tokens = 1;
  uint64_t seed = 1;
  int32_t vocab_size = 0;
  std::vector<int32_t> excluded_ids;  // never in prompts (EOS)
  double cancel_after_seconds = 0;    // cancel every request still running then; 0: never
};


// Decode steps in which every sequence of the point took part and no prompt was fed: the
// steady state a decode step time is quoted for.
struct SteadyDecode {
  int64_t steps = 0;
  double mean_step_seconds = 0;
  double p50_step_seconds = 0;
  double mean_context = 0;  // tokens per sequence (prompt + generated) during those steps
};

struct PointResult {
  std::string status = "ok";  // ok, timeout, error, submit_failed, stalled
  std::string message;
  int64_t batch = 0, prompt_tokens = 0, gen_tokens = 0;
  int64_t completed = 0;  // finished with length
  int64_t errors = 0;     // any other finish
  int64_t prompt_tokens_total = 0;
  int64_t generated_tokens = 0;
  double wall_seconds = 0;         // first submit to last final event
  double all_first_token_seconds = 0;  // until every sequence had a token (prefill phase)
  stats::Distribution ttft;
  int64_t engine_steps = 0;
  int64_t preemptions = 0;
  // (wall - prefill phase) / engine steps after it: includes the shrinking tail of the batch.
  double tail_step_seconds = 0;
  // From the token timestamps: between the last first token and the first sequence to finish,
  // every sequence decodes; mean gap between its consecutive tokens there.
  int64_t window_gaps = 0;
  double window_step_seconds = 0;
  double window_mean_context = 0;
  // From the observer.
  SteadyDecode steady;
  int64_t observed_steps = 0;
  int64_t prefill_steps = 0;
  double prefill_step_seconds_total = 0;
  int64_t decode_steps = 0;
  double decode_step_seconds_total = 0;
  int64_t peak_used_pages = 0;
  int64_t page_bytes = 0;
  int64_t total_pages = 0;
};

PointResult RunPoint(Engine& engine, StepRecorder& recorder, const PointSpec& spec);

}  // namespace squat::bench
