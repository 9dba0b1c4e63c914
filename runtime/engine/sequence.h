// One accepted request inside the engine, from Submit to its final event: what it asked for,
// its generation state (tokens, sampler, stop strings, timings), its KV cache while it holds
// pages, and where it is in its life. Engine thread only; internal to runtime/.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/kv_cache.h"
#include "runtime/engine/engine.h"
#include "runtime/sampling/sampler.h"
#include "runtime/sampling/stop_matcher.h"
#include "runtime/tokenizer/tokenizer.h"

namespace squat {

using EngineClock = std::chrono::steady_clock;

// waiting -> prefilling -> decoding -> finished, with preempted (pages reclaimed, queued for
// recomputation) between a running state and prefilling again. Any state but finished may end
// (cancelled, failed, done).
enum class SequenceState { kWaiting, kPrefilling, kDecoding, kPreempted, kFinished };
const char* SequenceStateName(SequenceState state);

class Sequence {
 public:
  uint64_t arrival = 0;  // submission order: larger is newer
  GenerateRequest request;
  kv::KvFormat kv_format;
  std::shared_ptr<RequestStream> stream;
  EngineClock::time_point submitted;
  int64_t prompt_len = 0;
  int64_t max_new_tokens = 0;  // max_tokens capped by the context length and the pool

  // Generation state; survives preemption.
  std::vector<int32_t> tokens;  // the prompt, then every generated token
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StreamingDecoder> decoder;
  std::unique_ptr<StopMatcher> stops;
  Timings timings;

  // KV state while running; preemption frees the cache and keeps what its recomputation needs.
  std::unique_ptr<kv::SequenceKvCache> cache;
  kv::ResumeState resume;
  // Tokens fed as the cache's prompt (in chunks); later tokens are fed one per step.
  int64_t prefill_end = 0;

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  int64_t computed() const { return cache ? cache->length() : 0; }

  SequenceState state() const { return state_; }
  // The one place transitions are checked: an illegal one is a bug and throws std::logic_error.
  void MoveTo(SequenceState next);
  // After a step that fed it: prefilling becomes decoding once the prompt part is in the cache.
  void StepDone();

 private:
  SequenceState state_ = SequenceState::kWaiting;
};

}  // namespace squat
