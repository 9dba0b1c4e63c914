#include "tools/eval/perplexity.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/eval/format_run.h"
#include "tools/eval/step_metrics.h"

namespace squat::eval {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<ContextResult> EvaluatePerplexity(LlamaModel& model, const PerplexityInputs& inputs,
                                                 const WindowPlan& plan, const ProgressFn& progress) {
  c10::InferenceMode inference;
  const auto start = std::chrono::steady_clock::now();
  const int64_t layers = model.config().num_hidden_layers;
  ContextResult result;
  result.plan = plan;
  for (const EvalFormat& f : inputs.formats) {
    FormatScores s;
    s.label = f.label;
    s.method = kv::KvMethodName(f.format.method);
    s.k_bits = f.format.k_bits;
    s.v_bits = f.format.v_bits;
    result.formats.push_back(s);
  }
  for (size_t w = 0; w < plan.starts.size(); ++w) {
    const auto window_start = std::chrono::steady_clock::now();
    std::vector<int64_t> window = inputs.bos;
    window.insert(window.end(), inputs.text_tokens.begin() + plan.starts[w],
                  inputs.text_tokens.begin() + plan.starts[w] + plan.text_tokens);
    std::vector<FormatScores> scores;  // this window alone, for the progress line
    for (const FormatScores& s : result.formats) scores.push_back(s.Empty());
    try {
      auto run = FormatRun::Create(model, inputs.formats, plan.context, inputs.isolated_attention,
                                   /*query_gram=*/true);
      if (!run.ok()) return run.status();
      (*run)->Prefill(std::vector<int64_t>(window.begin(), window.begin() + plan.prefix));
      AddQueryStats((*run)->query_grams(), inputs.lambda, inputs.subspace_dim, &result.query_stats);
      for (int64_t t = plan.prefix; t + 1 < plan.context; ++t) {
        const at::Tensor logits = (*run)->Step(window[t]);
        ScoreStep(logits, window[t + 1], &scores);
        ScoreAttention(**run, layers, &scores);
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("context ", plan.context, " window ", w, ": ", e.what_without_backtrace()));
    }
    std::string line = absl::StrFormat("[ctx %d] window %d/%d (text token %d): %d scored, %.1f s; ppl",
                                       plan.context, w + 1, plan.starts.size(), plan.starts[w], plan.scored,
                                       SecondsSince(window_start));
    for (size_t f = 0; f < scores.size(); ++f) {
      absl::StrAppendFormat(&line, " %s %.3f", scores[f].label, scores[f].perplexity());
      result.formats[f].Merge(scores[f]);
    }
    if (progress) progress(line);
  }
  result.seconds = SecondsSince(start);
  return result;
}

}  // namespace squat::eval
