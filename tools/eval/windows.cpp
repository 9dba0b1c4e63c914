#include "tools/eval/windows.h"

#include <algorithm>
#include <cmath>

namespace squat::eval {

WindowPlan PlanWindows(int64_t num_text_tokens, int64_t context, int64_t bos_tokens, double prefix_fraction,
                       int64_t max_windows) {
  WindowPlan plan;
  plan.context = context;
  plan.text_tokens = context - bos_tokens;
  plan.prefix = std::clamp<int64_t>(std::llround(static_cast<double>(context) * prefix_fraction), 1, context - 2);
  plan.scored = context - plan.prefix - 1;
  if (plan.text_tokens <= 0 || plan.scored <= 0) return plan;
  plan.available = num_text_tokens / plan.text_tokens;
  const int64_t n = max_windows > 0 ? std::min(max_windows, plan.available) : plan.available;
  for (int64_t i = 0; i < n; ++i) plan.starts.push_back(i * plan.available / n * plan.text_tokens);
  return plan;
}

}  // namespace squat::eval
