// How squat-eval cuts held-out text into evaluation windows (torch-free).
#pragma once

#include <cstdint>
#include <vector>

namespace squat::eval {

// Non-overlapping windows of `context` tokens. A window is the model's BOS (when its tokenizer
// adds one) followed by context - bos_tokens consecutive text tokens. Its first `prefix` tokens
// are prefilled; each later token is fed through the decode path, and the prediction of the
// following token is scored, so a window scores context - prefix - 1 tokens.
struct WindowPlan {
  int64_t context = 0;
  int64_t text_tokens = 0;  // text tokens per window
  int64_t prefix = 0;       // tokens prefilled, BOS included
  int64_t scored = 0;       // predictions scored per window
  int64_t available = 0;    // whole windows the text holds
  std::vector<int64_t> starts;  // text-token offsets of the windows evaluated, ascending
};

// max_windows > 0 picks that many of the available windows, spread evenly over the text
// (window i of n is available window floor(i * available / n)); 0 takes all. prefix is
// round(context * prefix_fraction), kept within [1, context - 2].
WindowPlan PlanWindows(int64_t num_text_tokens, int64_t context, int64_t bos_tokens, double prefix_fraction,
                       int64_t max_windows);

}  // namespace squat::eval
