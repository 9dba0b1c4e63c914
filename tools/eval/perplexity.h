// Perplexity and error vs fp16 of every KV format over held-out text windows of one length.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/llama_model.h"
#include "tools/eval/formats.h"
#include "tools/eval/scores.h"
#include "tools/eval/windows.h"

namespace squat::eval {

struct ContextResult {
  WindowPlan plan;
  std::vector<FormatScores> formats;  // same order as the formats evaluated; [0] is fp16
  std::vector<QueryStats> query_stats;  // per layer
  double seconds = 0;
};

struct PerplexityInputs {
  std::vector<int64_t> text_tokens;  // the whole held-out text, no special tokens
  std::vector<int64_t> bos;          // what the tokenizer puts before a text (maybe empty)
  std::vector<EvalFormat> formats;
  bool isolated_attention = true;
  double lambda = 1e-3;        // for the query statistics
  int64_t subspace_dim = 60;
};

using ProgressFn = std::function<void(const std::string&)>;

// Every window of `plan`: prefill its first plan.prefix tokens, then feed each later token
// through every format's decode path and score the prediction of the next one.
absl::StatusOr<ContextResult> EvaluatePerplexity(LlamaModel& model, const PerplexityInputs& inputs,
                                                 const WindowPlan& plan, const ProgressFn& progress);

}  // namespace squat::eval
