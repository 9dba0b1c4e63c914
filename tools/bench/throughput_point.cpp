#include "tools/bench/throughput_point.h"

#include <algorithm>
#include <random>
#include <thread>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace squat::bench {
namespace {

using namespace std::chrono_literals;

// A point whose requests produce nothing for this long is abandoned (an engine fault).
constexpr std::chrono::seconds kStallLimit(300);

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Prompt i of a point: uniform ids, reproducible from (seed, batch, prompt length, i).
std::vector<int32_t> RandomPrompt(const PointSpec& spec, int64_t index,
                                  const std::unordered_set<int32_t>& excluded) {
  std::seed_seq seq{static_cast<uint32_t>(spec.seed), static_cast<uint32_t>(spec.seed >> 32),
                    static_cast<uint32_t>(spec.batch), static_cast<uint32_t>(spec.prompt_tokens),
                    static_cast<uint32_t>(index)};
  std::mt19937_64 rng(seq);
  std::uniform_int_distribution<int32_t> id(0, spec.vocab_size - 1);
  std::vector<int32_t> prompt;
  prompt.reserve(spec.prompt_tokens);
  while (static_cast<int64_t>(prompt.size()) < spec.prompt_tokens) {
    const int32_t token = id(rng);
    if (!excluded.count(token)) prompt.push_back(token);
  }
  return prompt;
}

struct Track {
  std::shared_ptr<RequestStream> stream;
  std::vector<double> token_seconds;  // arrival of each token, from the point's start
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  std::string error;
};

// The window in which every sequence decodes: after the last first token, before the first
// sequence's last token. Mean gap between consecutive tokens of one sequence inside it.
void MeasureWindow(const std::vector<Track>& tracks, int64_t prompt_tokens, PointResult* result) {
  double start = 0, end = 1e300;
  for (const Track& t : tracks) {
    if (t.token_seconds.empty()) return;
    start = std::max(start, t.token_seconds.front());
    end = std::min(end, t.token_seconds.back());
  }
  double span = 0, context = 0;
  int64_t gaps = 0, tokens = 0;
  for (const Track& t : tracks) {
    int64_t first = -1, last = -1;
    for (size_t i = 0; i < t.token_seconds.size(); ++i) {
      if (t.token_seconds[i] < start || t.token_seconds[i] > end) continue;
      if (first < 0) first = static_cast<int64_t>(i);
      last = static_cast<int64_t>(i);
      context += prompt_tokens + static_cast<double>(i) + 1;
      ++tokens;
    }
    if (last > first) {
      span += t.token_seconds[last] - t.token_seconds[first];
      gaps += last - first;
    }
  }
  result->window_gaps = gaps;
  if (gaps > 0) result->window_step_seconds = span / gaps;
  if (tokens > 0) result->window_mean_context = context / tokens;
}

// Splits the observer's steps: prefill (any prompt rows) vs decode, and the steady decode steps
// that carried the whole batch.
void MeasureSteps(const std::vector<StepRecord>& steps, const PointResult& partial, PointResult* result) {
  std::vector<double> steady;
  for (const StepRecord& s : steps) {
    if (s.prefill) {
      ++result->prefill_steps;
      result->prefill_step_seconds_total += s.duration_seconds;
    } else {
      ++result->decode_steps;
      result->decode_step_seconds_total += s.duration_seconds;
      if (s.num_sequences == partial.batch) steady.push_back(s.duration_seconds);
    }
  }
  result->observed_steps = static_cast<int64_t>(steps.size());
  result->steady.steps = static_cast<int64_t>(steady.size());
  if (!steady.empty()) {
    double sum = 0;
    for (double d : steady) sum += d;
    result->steady.mean_step_seconds = sum / steady.size();
    result->steady.p50_step_seconds = stats::Summarize(steady).p50;
    result->steady.mean_context = partial.window_mean_context;
  }
}

}  // namespace

void StepRecorder::OnStep(const StepInfo& step) {
  std::lock_guard<std::mutex> lock(mu_);
  steps_.push_back(StepRecord{Clock::now(), step.prefill, step.num_sequences, step.num_tokens,
                              step.duration_seconds});
}

void StepRecorder::OnPreemptions(int64_t) {}  // Engine::Stats() counts them

std::vector<StepRecord> StepRecorder::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<StepRecord> taken;
  taken.swap(steps_);
  return taken;
}

PointResult RunPoint(Engine& engine, StepRecorder& recorder, const PointSpec& spec) {
  PointResult result;
  result.batch = spec.batch;
  result.prompt_tokens = spec.prompt_tokens;
  result.gen_tokens = spec.gen_tokens;

  const std::unordered_set<int32_t> excluded(spec.excluded_ids.begin(), spec.excluded_ids.end());
  std::vector<GenerateRequest> requests(spec.batch);
  for (int64_t i = 0; i < spec.batch; ++i) {
    GenerateRequest& r = requests[i];
    r.request_id = absl::StrCat("tp-", spec.batch, "-", spec.prompt_tokens, "-", i);
    r.prompt_token_ids = RandomPrompt(spec, i, excluded);
    r.sampling.max_tokens = static_cast<int32_t>(spec.gen_tokens);
    r.sampling.temperature = 0;  // greedy, like HF generate(do_sample=False)
    r.sampling.ignore_eos = true;
  }

  recorder.Take();  // drop whatever ran before (warm-up, the previous point)
  const EngineStats stats_before = engine.Stats();
  std::vector<Track> tracks(spec.batch);
  const Clock::time_point start = Clock::now();
  for (int64_t i = 0; i < spec.batch; ++i) {
    auto stream = engine.Submit(std::move(requests[i]));
    if (!stream.ok()) {
      result.status = "submit_failed";
      result.message = absl::StrCat("request ", i, ": ", stream.status().ToString());
      for (int64_t j = 0; j < i; ++j) tracks[j].stream->Cancel();
      tracks.resize(i);
      break;
    }
    tracks[i].stream = *std::move(stream);
  }

  int64_t unfinished = static_cast<int64_t>(tracks.size());
  int64_t without_token = unfinished;
  int64_t steps_at_all_first = -1;
  bool cancelled = false;
  Clock::time_point last_pool_poll = start;
  Clock::time_point last_progress = start;
  GenerationEvent event;
  while (unfinished > 0) {
    bool progressed = false;
    for (Track& t : tracks) {
      if (t.finished) continue;
      while (t.stream->Next(&event, 0ms)) {
        progressed = true;
        const double now = Seconds(start, Clock::now());
        if (!event.token_ids.empty()) {
          if (t.token_seconds.empty() && --without_token == 0) {
            result.all_first_token_seconds = now;
            steps_at_all_first = engine.Stats().steps;
          }
          t.token_seconds.insert(t.token_seconds.end(), event.token_ids.size(), now);
        }
        if (event.finished) {
          t.finished = true;
          t.reason = event.finish_reason;
          t.error = event.error_message;
          result.wall_seconds = now;
          --unfinished;
          break;
        }
      }
    }
    const Clock::time_point now = Clock::now();
    if (progressed) last_progress = now;
    if (now - last_progress > kStallLimit) {
      result.status = "stalled";
      result.message = absl::StrCat("no event from the engine for ", kStallLimit.count(), " s");
      for (Track& t : tracks) t.stream->Cancel();
      break;
    }
    if (now - last_pool_poll >= 2ms) {
      last_pool_poll = now;
      const KvPoolUsage pool = engine.PoolUsage();
      result.peak_used_pages = std::max(result.peak_used_pages, pool.used_pages);
    }
    if (!cancelled && spec.cancel_after_seconds > 0 && Seconds(start, now) > spec.cancel_after_seconds) {
      cancelled = true;
      result.status = "timeout";
      result.message = absl::StrCat("cancelled after ", spec.cancel_after_seconds, " s (time budget)");
      for (Track& t : tracks) {
        if (!t.finished) t.stream->Cancel();
      }
    }
    if (cancelled && Seconds(start, now) > spec.cancel_after_seconds + 120) {
      result.message += "; requests did not end within 120 s of their cancellation";
      break;
    }
    if (!progressed) std::this_thread::sleep_for(100us);
  }

  // The engine reports a step to the observer after streaming its tokens: let the last one land.
  if (result.status != "stalled") engine.WaitIdle(30s);
  const EngineStats stats_after = engine.Stats();
  const KvPoolUsage pool = engine.PoolUsage();
  result.page_bytes = pool.page_bytes;
  result.total_pages = pool.total_pages;
  result.engine_steps = stats_after.steps - stats_before.steps;
  result.preemptions = stats_after.preemptions - stats_before.preemptions;
  std::vector<double> ttft;
  for (const Track& t : tracks) {
    result.prompt_tokens_total += spec.prompt_tokens;
    result.generated_tokens += static_cast<int64_t>(t.token_seconds.size());
    if (!t.token_seconds.empty()) ttft.push_back(t.token_seconds.front());
    if (t.finished && t.reason == FinishReason::kLength) {
      ++result.completed;
    } else if (t.reason != FinishReason::kCancelled || !cancelled) {
      ++result.errors;
      if (result.status == "ok") {
        result.status = "error";
        result.message = absl::StrCat("a request ended with ", FinishReasonName(t.reason),
                                      t.error.empty() ? "" : ": ", t.error);
      }
    }
  }
  result.ttft = stats::Summarize(ttft);
  if (steps_at_all_first >= 0 && stats_after.steps > steps_at_all_first) {
    result.tail_step_seconds = (result.wall_seconds - result.all_first_token_seconds) /
                               static_cast<double>(stats_after.steps - steps_at_all_first);
  }
  if (result.status == "ok") MeasureWindow(tracks, spec.prompt_tokens, &result);
  MeasureSteps(recorder.Take(), result, &result);
  return result;
}

}  // namespace squat::bench
