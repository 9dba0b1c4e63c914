// Continuous batching: which sequences feed how many tokens in the next engine step, under a
// token budget, a cap on running sequences and the KV page pool. When the pool is short the
// newest running sequence is preempted (its pages freed) and recomputed later. The scheduler
// sees the cache manager's allocation results and opaque resume handles, never a KV format's
// internals. Engine thread only; internal to runtime/ (includes ATen through kv_cache.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_cache.h"
#include "runtime/engine/sequence.h"

namespace squat {

// One sequence's rows in a step: tokens [computed, computed + num_tokens) of seq->tokens.
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t num_tokens = 0;
  bool prefill = false;         // feeds (part of) the cache's prompt, not one decode token
  bool prompt_complete = true;  // Commit's flag: false for a prompt chunk with more to come
  bool samples = false;         // the chunk ends at the newest token: its logits pick the next
};

struct StepPlan {
  std::vector<ScheduledChunk> chunks;  // running sequences oldest first, then admissions
  // Sequences that can never be scheduled (removed from the scheduler, cache attached).
  std::vector<std::pair<std::unique_ptr<Sequence>, absl::Status>> failed;
};

struct SchedulerLimits {
  int64_t max_batched_tokens = 2048;  // rows per step, prefill chunks and decodes together
  int64_t max_prefill_chunk = 512;    // prompt tokens one sequence feeds per step
  int64_t max_running = 256;          // sequences holding a cache at once
};

class Scheduler {
 public:
  Scheduler(kv::KvCacheManager& kv_manager, SchedulerLimits limits);

  // Queues a new sequence behind every waiting one.
  void Enqueue(std::unique_ptr<Sequence> seq);
  // Removes the waiting and running sequences whose request was cancelled (every sequence when
  // `all`), with their caches still attached: the caller finishes them.
  std::vector<std::unique_ptr<Sequence>> TakeCancelled(bool all);
  // Reserves pages for the running sequences' next tokens (preempting the newest while the pool
  // is short), then admits waiting sequences in FIFO order while budget, cap and pages allow.
  StepPlan Plan();
  // Removes a running sequence (finished) and hands it back, cache attached.
  std::unique_ptr<Sequence> Release(const Sequence* seq);

  bool empty() const { return waiting_.empty() && running_.empty(); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t preemptions() const { return preemptions_; }

 private:
  // The chunk a sequence would feed next given `budget` tokens (num_tokens 0: none).
  ScheduledChunk NextChunk(Sequence& seq, int64_t budget) const;
  // Frees the newest running sequence's cache and queues it first for recomputation.
  void PreemptNewest();
  // Releases the pages a waiting (preempted) sequence's resume handle keeps, newest first, for
  // an older sequence that cannot run otherwise; false when none keeps any.
  bool ReleaseWaitingResume(const Sequence* keep);
  absl::Status ReserveFor(Sequence& seq, int64_t num_tokens);
  bool Admit(int64_t* budget, StepPlan& plan);

  kv::KvCacheManager& kv_;
  const SchedulerLimits limits_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // ascending arrival (oldest first)
  int64_t preemptions_ = 0;
};

}  // namespace squat
