#include "runtime/engine/sequence.h"

#include <stdexcept>
#include <string>

namespace squat {

const char* SequenceStateName(SequenceState state) {
  switch (state) {
    case SequenceState::kWaiting: return "waiting";
    case SequenceState::kPrefilling: return "prefilling";
    case SequenceState::kDecoding: return "decoding";
    case SequenceState::kPreempted: return "preempted";
    case SequenceState::kFinished: return "finished";
  }
  return "unknown";
}

namespace {

bool Allowed(SequenceState from, SequenceState to) {
  using S = SequenceState;
  if (to == S::kFinished) return from != S::kFinished;
  switch (from) {
    case S::kWaiting: return to == S::kPrefilling;
    case S::kPrefilling: return to == S::kDecoding || to == S::kPreempted;
    case S::kDecoding: return to == S::kPreempted;
    case S::kPreempted: return to == S::kPrefilling;
    case S::kFinished: return false;
  }
  return false;
}

}  // namespace

void Sequence::MoveTo(SequenceState next) {
  if (!Allowed(state_, next)) {
    throw std::logic_error("request " + request.request_id + ": illegal state change " +
                           SequenceStateName(state_) + " -> " + SequenceStateName(next));
  }
  state_ = next;
}

void Sequence::StepDone() {
  if (state_ == SequenceState::kPrefilling && computed() >= prefill_end) MoveTo(SequenceState::kDecoding);
}

}  // namespace squat
