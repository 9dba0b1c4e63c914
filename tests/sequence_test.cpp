// A sequence's life (runtime/engine/sequence.h): the transitions the engine and the scheduler make are
// the only ones allowed, and every other one is refused where it is attempted.
#include "runtime/engine/sequence.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace squat {
namespace {

using S = SequenceState;

TEST(SequenceTest, LifeFollowsTheStateMachine) {
  Sequence seq;
  seq.request.request_id = "r1";
  EXPECT_EQ(seq.state(), S::kWaiting);
  seq.MoveTo(S::kPrefilling);
  seq.prefill_end = 3;
  seq.StepDone();  // nothing computed yet (no cache): still prefilling
  EXPECT_EQ(seq.state(), S::kPrefilling);
  seq.MoveTo(S::kPreempted);
  seq.MoveTo(S::kPrefilling);
  seq.prefill_end = 0;
  seq.StepDone();  // the prompt part is in: decoding
  EXPECT_EQ(seq.state(), S::kDecoding);
  seq.StepDone();
  EXPECT_EQ(seq.state(), S::kDecoding);
  seq.MoveTo(S::kPreempted);
  seq.MoveTo(S::kPrefilling);
  seq.MoveTo(S::kFinished);
  EXPECT_EQ(seq.state(), S::kFinished);
}

TEST(SequenceTest, EveryOtherTransitionIsRefused) {
  const std::vector<S> states = {S::kWaiting, S::kPrefilling, S::kDecoding, S::kPreempted, S::kFinished};
  // The allowed ones (from, to); anything may finish once.
  const std::vector<std::pair<S, S>> allowed = {{S::kWaiting, S::kPrefilling},   {S::kPrefilling, S::kDecoding},
                                                {S::kPrefilling, S::kPreempted}, {S::kDecoding, S::kPreempted},
                                                {S::kPreempted, S::kPrefilling}};
  // Reaches `state` through allowed transitions.
  auto at = [](S state) {
    Sequence seq;
    seq.request.request_id = "r2";
    if (state == S::kWaiting) return seq;
    if (state == S::kFinished) {
      seq.MoveTo(S::kFinished);
      return seq;
    }
    seq.MoveTo(S::kPrefilling);
    if (state == S::kDecoding || state == S::kPreempted) seq.MoveTo(S::kDecoding);
    if (state == S::kPreempted) seq.MoveTo(S::kPreempted);
    return seq;
  };
  int refused = 0;
  for (S from : states) {
    for (S to : states) {
      Sequence seq = at(from);
      ASSERT_EQ(seq.state(), from);
      bool ok = to == S::kFinished && from != S::kFinished;
      for (const auto& [a, b] : allowed) ok |= a == from && b == to;
      if (ok) {
        EXPECT_NO_THROW(seq.MoveTo(to)) << SequenceStateName(from) << " -> " << SequenceStateName(to);
        EXPECT_EQ(seq.state(), to);
      } else {
        try {
          seq.MoveTo(to);
          ADD_FAILURE() << SequenceStateName(from) << " -> " << SequenceStateName(to) << " was allowed";
        } catch (const std::logic_error& e) {
          ++refused;
          EXPECT_NE(std::string(e.what()).find("r2"), std::string::npos) << e.what();  // names the request
          EXPECT_EQ(seq.state(), from);  // unchanged
        }
      }
    }
  }
  EXPECT_EQ(refused, 25 - 5 - 4);  // 25 pairs, 5 allowed moves, 4 ways to finish
}

}  // namespace
}  // namespace squat
