#include "runtime/engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace squat {
Scheduler::Scheduler(kv::KvCacheManager& kv_manager, SchedulerLimits limits)
    : kv_(kv_manager), limits_(limits) {}

void Scheduler::Enqueue(std::unique_ptr<Sequence> seq) {
  seq->prefill_end = static_cast<int64_t>(seq->tokens.size());  // the prompt: nothing generated yet
  waiting_.push_back(std::move(seq));
}

std::vector<std::unique_ptr<Sequence>> Scheduler::TakeCancelled(bool all) {
  std::vector<std::unique_ptr<Sequence>> taken;
  auto take = [&](auto& container) {
    for (auto it = container.begin(); it != container.end();) {
      if (all || (*it)->stream->cancel_requested()) {
        taken.push_back(std::move(*it));
        it = container.erase(it);
      } else {
        ++it;
      }
    }
  };
  take(running_);
  take(waiting_);
  return taken;
}

std::unique_ptr<Sequence> Scheduler::Release(const Sequence* seq) {
  auto it = std::find_if(running_.begin(), running_.end(), [seq](const auto& s) { return s.get() == seq; });
  if (it == running_.end()) return nullptr;
  std::unique_ptr<Sequence> released = std::move(*it);
  running_.erase(it);
  return released;
}

ScheduledChunk Scheduler::NextChunk(Sequence& seq, int64_t budget) const {
  ScheduledChunk chunk;
  chunk.seq = &seq;
  const int64_t computed = seq.computed();
  if (computed < seq.prefill_end) {
    chunk.prefill = true;
    chunk.num_tokens = std::min({seq.prefill_end - computed, limits_.max_prefill_chunk, budget});
    chunk.prompt_complete = computed + chunk.num_tokens == seq.prefill_end;
  } else {
    chunk.num_tokens = budget > 0 ? 1 : 0;
  }
  chunk.samples = computed + chunk.num_tokens == static_cast<int64_t>(seq.tokens.size());
  return chunk;
}

void Scheduler::PreemptNewest() {
  std::unique_ptr<Sequence> seq = std::move(running_.back());
  running_.pop_back();
  // Its pages go back to the pool now. A cache that had nothing to keep leaves the handle of an
  // earlier preemption in place (a recomputation preempted again before its prompt completed).
  kv::ResumeState resume = kv_.Preempt(std::move(seq->cache));
  if (resume.pages() > 0 || seq->resume.pages() == 0) seq->resume = std::move(resume);
  seq->prefill_end = seq->resume.RecomputePrefill(seq->prompt_len, static_cast<int64_t>(seq->tokens.size()));
  seq->MoveTo(SequenceState::kPreempted);
  // Newest preempted first, so the front of the queue stays in arrival order.
  waiting_.push_front(std::move(seq));
  ++preemptions_;
}

bool Scheduler::ReleaseWaitingResume(const Sequence* keep) {
  for (auto it = waiting_.rbegin(); it != waiting_.rend(); ++it) {
    if (it->get() != keep && (*it)->resume.pages() > 0) {
      (*it)->resume.Release();
      return true;
    }
  }
  return false;
}

absl::Status Scheduler::ReserveFor(Sequence& seq, int64_t num_tokens) {
  return seq.cache->Reserve(seq.computed() + num_tokens);
}

StepPlan Scheduler::Plan() {
  StepPlan plan;
  int64_t budget = limits_.max_batched_tokens;
  const int64_t preemptions_before = preemptions_;
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& seq = *running_[i];
    const ScheduledChunk chunk = NextChunk(seq, budget);
    if (chunk.num_tokens == 0) continue;
    absl::Status reserved = ReserveFor(seq, chunk.num_tokens);
    bool preempted_self = false;
    while (absl::IsResourceExhausted(reserved)) {
      if (running_.size() > i + 1) {
        PreemptNewest();  // someone newer gives way
      } else if (i > 0) {
        PreemptNewest();  // this one is the newest: it gives way to the older ones
        preempted_self = true;
        break;
      } else if (!ReleaseWaitingResume(nullptr)) {
        break;  // alone, and nothing else holds pages it could take
      }
      reserved = ReserveFor(seq, chunk.num_tokens);
    }
    if (preempted_self) break;
    if (!reserved.ok()) {
      std::unique_ptr<Sequence> failed = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      --i;
      plan.failed.emplace_back(std::move(failed),
                               absl::Status(reserved.code(), absl::StrCat("the KV pool cannot hold this sequence: ",
                                                                          reserved.message())));
      continue;
    }
    plan.chunks.push_back(chunk);
    budget -= chunk.num_tokens;
  }
  // After a preemption the pool is tight: admitting now would only feed the next preemption.
  if (preemptions_ == preemptions_before) {
    while (budget > 0 && num_running() < limits_.max_running && !waiting_.empty()) {
      if (!Admit(&budget, plan)) break;
    }
  }
  return plan;
}

bool Scheduler::Admit(int64_t* budget, StepPlan& plan) {
  Sequence& seq = *waiting_.front();
  ScheduledChunk chunk = NextChunk(seq, *budget);
  if (chunk.num_tokens == 0) return false;
  auto fail = [&](const absl::Status& status) {
    plan.failed.emplace_back(std::move(waiting_.front()), status);
    waiting_.pop_front();
    return true;
  };
  while (true) {
    // The whole prompt part is reserved now: a prompt that is admitted can finish its prefill
    // unless an older sequence needs the pages.
    auto cache = kv_.NewSequence(seq.kv_format, seq.prefill_end, &seq.resume);
    if (cache.ok()) {
      // Keep ~1% of the pool free for the running sequences' growth, or they would preempt
      // this one within a few steps and its prefill would be wasted.
      const kv::PoolStats pool = kv_.stats();
      const int64_t headroom = std::max<int64_t>(1, pool.total_pages / 100);
      if (!running_.empty() && pool.total_pages - pool.used_pages < headroom) return false;
      seq.cache = *std::move(cache);
      break;
    }
    if (!absl::IsResourceExhausted(cache.status())) return fail(cache.status());
    if (!running_.empty()) return false;  // pages come back as running sequences finish
    if (!ReleaseWaitingResume(&seq)) {
      return fail(absl::Status(cache.status().code(), absl::StrCat("the KV pool cannot hold this sequence: ",
                                                                   cache.status().message())));
    }
  }
  std::unique_ptr<Sequence> admitted = std::move(waiting_.front());
  waiting_.pop_front();
  if (admitted->state() == SequenceState::kWaiting) {
    admitted->timings.queue_seconds =
        std::chrono::duration<double>(EngineClock::now() - admitted->submitted).count();
  }
  admitted->MoveTo(SequenceState::kPrefilling);
  auto at = std::upper_bound(running_.begin(), running_.end(), admitted->arrival,
                             [](uint64_t arrival, const auto& s) { return arrival < s->arrival; });
  running_.insert(at, std::move(admitted));
  plan.chunks.push_back(chunk);
  *budget -= chunk.num_tokens;
  return true;
}

}  // namespace squat
