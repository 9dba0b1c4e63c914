#include "tools/eval/needle.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/eval/format_run.h"

namespace squat::eval {
namespace {

constexpr const char* kNeedleStem = " The secret number is";
constexpr const char* kQuestion = "\nWhat is the secret number?";

std::vector<int64_t> Encode(const Tokenizer& tokenizer, const std::string& text) {
  const std::vector<int32_t> ids = tokenizer.Encode(text, /*add_special_tokens=*/false);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

void Append(std::vector<int64_t>* into, const std::vector<int64_t>& more) {
  into->insert(into->end(), more.begin(), more.end());
}

// Whether a token ends a sentence or a line, so that the needle goes in between sentences.
bool EndsSentence(const Tokenizer& tokenizer, int64_t id) {
  const std::string text = tokenizer.Decode({static_cast<int32_t>(id)}, /*skip_special_tokens=*/false);
  if (text.find('\n') != std::string::npos) return true;
  const size_t last = text.find_last_not_of(' ');
  return last != std::string::npos && (text[last] == '.' || text[last] == '!' || text[last] == '?');
}

// The first sentence boundary at or after `target` (within 256 tokens), else `target`.
int64_t SnapToSentence(const Tokenizer& tokenizer, const std::vector<int64_t>& hay, int64_t target) {
  for (int64_t i = std::max<int64_t>(target, 1); i <= std::min<int64_t>(target + 256, hay.size()); ++i) {
    if (EndsSentence(tokenizer, hay[i - 1])) return i;
  }
  return target;
}

struct CaseScores {
  std::vector<double> logprob;  // per format
  std::vector<bool> exact;
  std::vector<double> first_rank;
};

// Prefills `prompt`, feeds the question stem and the answer (all but its last token) through
// the decode path, and scores the answer tokens under every format.
CaseScores ScoreAnswer(LlamaModel& model, const std::vector<EvalFormat>& formats, const std::vector<int64_t>& prompt,
                       const std::vector<int64_t>& question, const std::vector<int64_t>& answer) {
  auto run = FormatRun::Create(model, formats, prompt.size() + question.size() + answer.size(),
                               /*isolated_attention=*/false, /*query_gram=*/false);
  TORCH_CHECK(run.ok(), "needle: ", run.status().ToString());
  (*run)->Prefill(prompt);
  at::Tensor logits;
  for (int64_t token : question) logits = (*run)->Step(token);
  const int64_t n = static_cast<int64_t>(formats.size());
  CaseScores out{std::vector<double>(n, 0.0), std::vector<bool>(n, true), std::vector<double>(n, 0.0)};
  for (size_t i = 0; i < answer.size(); ++i) {
    if (i > 0) logits = (*run)->Step(answer[i - 1]);
    const at::Tensor l = logits.to(at::kDouble);
    const at::Tensor target_logit = l.select(1, answer[i]).unsqueeze(1);
    const at::Tensor stats = at::stack({at::log_softmax(l, -1).select(1, answer[i]),
                                        (l.argmax(-1) == answer[i]).to(at::kDouble),
                                        (l > target_logit).sum(-1).to(at::kDouble)},
                                       1)
                                 .cpu()
                                 .contiguous();
    const auto a = stats.accessor<double, 2>();
    for (int64_t f = 0; f < n; ++f) {
      out.logprob[f] += a[f][0];
      out.exact[f] = out.exact[f] && a[f][1] > 0.5;
      if (i == 0) out.first_rank[f] = a[f][2];
    }
  }
  return out;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<NeedleResult> RunNeedle(LlamaModel& model, const Tokenizer& tokenizer, const NeedleInputs& inputs,
                                       const ProgressFn& progress) {
  c10::InferenceMode inference;
  const auto start = std::chrono::steady_clock::now();
  NeedleResult result;
  result.needle_template = absl::StrCat(kNeedleStem, " NNNN.");
  result.question = absl::StrCat(kQuestion, kNeedleStem);
  const std::vector<int64_t> stem = Encode(tokenizer, kNeedleStem);
  std::vector<int64_t> question = Encode(tokenizer, kQuestion);
  Append(&question, stem);
  const std::vector<EvalFormat> fp16_only = {inputs.formats[0]};
  std::mt19937 rng(inputs.seed);
  for (int64_t context : inputs.contexts) {
    for (double depth : inputs.depths) {
      NeedleCell cell;
      cell.context = context;
      cell.depth = depth;
      for (const EvalFormat& f : inputs.formats) cell.formats.push_back({f.label});
      for (int64_t trial = 0; trial < inputs.trials; ++trial) {
        const auto case_start = std::chrono::steady_clock::now();
        const int secret = std::uniform_int_distribution<int>(1000, 9999)(rng);
        const std::vector<int64_t> answer = Encode(tokenizer, absl::StrCat(" ", secret));
        std::vector<int64_t> needle = stem;
        Append(&needle, answer);
        Append(&needle, Encode(tokenizer, "."));
        // The whole sequence (prompt, question, answer) fits in `context` positions.
        const int64_t hay_len =
            context - static_cast<int64_t>(inputs.bos.size() + needle.size() + question.size() + answer.size());
        if (hay_len < 16 || hay_len > static_cast<int64_t>(inputs.text_tokens.size())) {
          return absl::InvalidArgumentError(absl::StrCat("needle context ", context, " needs ", hay_len,
                                                         " haystack tokens; the text has ", inputs.text_tokens.size()));
        }
        const int64_t offset = std::uniform_int_distribution<int64_t>(
            0, static_cast<int64_t>(inputs.text_tokens.size()) - hay_len)(rng);
        const std::vector<int64_t> hay(inputs.text_tokens.begin() + offset, inputs.text_tokens.begin() + offset + hay_len);
        const int64_t at = SnapToSentence(tokenizer, hay, std::llround(depth * static_cast<double>(hay_len)));
        std::vector<int64_t> prompt = inputs.bos, control = inputs.bos;
        prompt.insert(prompt.end(), hay.begin(), hay.begin() + at);
        Append(&prompt, needle);
        prompt.insert(prompt.end(), hay.begin() + at, hay.end());
        Append(&control, hay);
        CaseScores with, without;
        try {
          with = ScoreAnswer(model, inputs.formats, prompt, question, answer);
          without = ScoreAnswer(model, fp16_only, control, question, answer);
        } catch (const c10::Error& e) {
          return absl::InternalError(absl::StrCat("needle context ", context, ": ", e.what_without_backtrace()));
        }
        cell.cases += 1;
        cell.control_logprob_sum += without.logprob[0];
        std::string line = absl::StrFormat("[needle ctx %d depth %.2f trial %d] secret %d at token %d, %.1f s; logprob",
                                           context, depth, trial + 1, secret, inputs.bos.size() + at,
                                           SecondsSince(case_start));
        for (size_t f = 0; f < cell.formats.size(); ++f) {
          NeedleFormatScores& s = cell.formats[f];
          s.cases += 1;
          s.logprob_sum += with.logprob[f];
          s.abs_delta_logprob_sum += std::abs(with.logprob[f] - with.logprob[0]);
          s.exact += with.exact[f] ? 1 : 0;
          s.first_rank_sum += with.first_rank[f];
          absl::StrAppendFormat(&line, " %s %.2f%s", s.label, with.logprob[f], with.exact[f] ? "*" : "");
        }
        absl::StrAppendFormat(&line, " (no needle %.2f; * = greedy exact)", without.logprob[0]);
        if (progress) progress(line);
      }
      result.cells.push_back(cell);
    }
  }
  result.seconds = SecondsSince(start);
  return result;
}

}  // namespace squat::eval
