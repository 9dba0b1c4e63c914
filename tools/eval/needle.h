// Needle in a haystack: a "secret number" sentence hidden at several depths of held-out text;
// after the text (the prefilled prompt) a question and the answer's stem go through the
// decode path, so that retrieving the number reads the quantized cache. Scored by the
// log-probability, greedy exact match and rank of the number's tokens under every format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/llama_model.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tools/eval/formats.h"
#include "tools/eval/perplexity.h"

namespace squat::eval {

struct NeedleFormatScores {
  std::string label;
  int64_t cases = 0;
  double logprob_sum = 0;        // log p(answer tokens | prompt, question), natural log
  double abs_delta_logprob_sum = 0;  // |logprob - fp16's| per case
  int64_t exact = 0;             // every answer token is the argmax (greedy decoding reproduces it)
  double first_rank_sum = 0;     // rank of the first answer token (0 = the argmax)
};

struct NeedleCell {
  int64_t context = 0;  // tokens in all: BOS, haystack with the needle, question, answer
  double depth = 0;     // needle position as a share of the haystack
  std::vector<NeedleFormatScores> formats;
  double control_logprob_sum = 0;  // fp16, the same haystack without the needle
  int64_t cases = 0;
};

struct NeedleResult {
  std::string needle_template, question;
  std::vector<NeedleCell> cells;
  double seconds = 0;
};

struct NeedleInputs {
  std::vector<int64_t> text_tokens;
  std::vector<int64_t> bos;
  std::vector<EvalFormat> formats;
  std::vector<int64_t> contexts;
  std::vector<double> depths;
  int64_t trials = 2;
  uint32_t seed = 1;
};

absl::StatusOr<NeedleResult> RunNeedle(LlamaModel& model, const Tokenizer& tokenizer, const NeedleInputs& inputs,
                                       const ProgressFn& progress);

}  // namespace squat::eval
