// Per-step comparison of every format with the fp16 reference (float64 arithmetic).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "tools/eval/format_run.h"
#include "tools/eval/scores.h"

namespace squat::eval {

// logits [F, vocab] (row 0: fp16) predict `target`: adds NLL, |logit error|, KL(fp16 || f)
// and top-1 agreement to scores[f].
void ScoreStep(const at::Tensor& logits, int64_t target, std::vector<FormatScores>* scores);

// After a decode step: relative L2 error of every layer's attention output vs the fp16 run's,
// own-run and (when the run has shadows) isolated.
void ScoreAttention(const FormatRun& run, int64_t num_layers, std::vector<FormatScores>* scores);

// Adds one prompt's query Gram spectra (FormatRun::query_grams) to `stats` (one per layer).
void AddQueryStats(const std::vector<at::Tensor>& grams, double lambda, int64_t subspace_dim,
                   std::vector<QueryStats>* stats);

}  // namespace squat::eval
