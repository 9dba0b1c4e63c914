#include "tools/eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

namespace squat::eval {
namespace {

using nlohmann::ordered_json;

std::string Bits(const FormatScores& s) {
  return s.method == "fp16" ? "16" : absl::StrCat("K", s.k_bits, "V", s.v_bits);
}

// NaN (not measured) as "-" in tables and null in JSON.
std::string Num(double v, const char* format = "%.4f") {
  if (std::isnan(v)) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, v);
  return buffer;
}
ordered_json J(double v) { return std::isnan(v) ? ordered_json(nullptr) : ordered_json(v); }

const FormatScores& Find(const std::vector<FormatScores>& formats, const std::string& label) {
  for (const FormatScores& s : formats) {
    if (s.label == label) return s;
  }
  return formats.front();  // callers look up labels SquatKiviPairs found
}

// (squat-like label, kivi label) for every SQuat format whose KIVI twin was evaluated.
std::vector<std::pair<std::string, std::string>> SquatKiviPairs(const std::vector<FormatScores>& formats) {
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const FormatScores& s : formats) {
    if (s.method != "squat" && s.method != "squat-post") continue;
    for (const FormatScores& k : formats) {
      if (k.method == "kivi" && k.k_bits == s.k_bits && k.v_bits == s.v_bits) pairs.emplace_back(s.label, k.label);
    }
  }
  return pairs;
}

void PrintPerplexity(std::ostream& out, const ContextResult& c) {
  const FormatScores& ref = c.formats[0];
  out << "\n### Context " << c.plan.context << ": " << c.plan.starts.size() << " windows (of " << c.plan.available
      << "), prefix " << c.plan.prefix << ", " << c.plan.scored << " scored tokens each (" << ref.tokens
      << " in all), " << absl::StrFormat("%.0f", c.seconds) << " s\n\n"
      << "| format | bits | perplexity | Δppl vs fp16 | ΔNLL vs fp16 ± s.e. | mean abs Δlogit | max abs Δlogit"
         " | KL(fp16‖fmt) | top-1 agree | attn rel-L2 (own run) | attn rel-L2 (isolated) |\n"
      << "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const FormatScores& s : c.formats) {
    const double delta = (s.perplexity() / ref.perplexity() - 1.0) * 100.0;
    const PairedDifference d = NllDifference(s, ref);
    out << "| " << s.method << " | " << Bits(s) << " | " << Num(s.perplexity(), "%.3f") << " | "
        << absl::StrFormat("%+.2f%%", delta) << " | " << absl::StrFormat("%+.4f ± %.4f", d.mean, d.standard_error)
        << " | " << Num(s.mean_abs_logit_error()) << " | "
        << Num(s.max_abs_logit_error, "%.3f") << " | " << Num(s.mean_kl(), "%.5f") << " | "
        << Num(s.top1_agreement(), "%.4f") << " | " << Num(s.mean_attention_rel_l2()) << " | "
        << Num(s.mean_isolated_rel_l2()) << " |\n";
  }
  const std::vector<std::pair<std::string, std::string>> pairs = SquatKiviPairs(c.formats);
  if (!pairs.empty()) {
    out << "\nSQuat against KIVI at equal bits, on the same tokens (negative: SQuat closer to fp16 / better):\n\n"
        << "| pair | ΔNLL ± s.e. (nats/token) | KL ratio | mean abs Δlogit ratio | isolated attn rel-L2 ratio |\n"
        << "| --- | --- | --- | --- | --- |\n";
    for (const auto& [squat, kivi] : pairs) {
      const FormatScores& a = Find(c.formats, squat);
      const FormatScores& b = Find(c.formats, kivi);
      const PairedDifference d = NllDifference(a, b);
      out << "| " << squat << " − " << kivi << " | " << absl::StrFormat("%+.4f ± %.4f", d.mean, d.standard_error)
          << " | " << Num(a.mean_kl() / b.mean_kl(), "%.3f") << " | "
          << Num(a.mean_abs_logit_error() / b.mean_abs_logit_error(), "%.3f") << " | "
          << Num(a.mean_isolated_rel_l2() / b.mean_isolated_rel_l2(), "%.3f") << " |\n";
    }
  }
  if (!c.query_stats.empty()) {
    out << "\nPrompt queries (post-RoPE, per KV head, mean over heads and windows):\n\n"
        << "| layer | effective rank (of d) | top-4 share | λσ₁² | λσ_r² |\n| --- | --- | --- | --- | --- |\n";
    for (size_t l = 0; l < c.query_stats.size(); ++l) {
      const QueryStats& q = c.query_stats[l];
      const double n = static_cast<double>(std::max<int64_t>(q.samples, 1));
      out << "| " << l << " | " << Num(q.effective_rank_sum / n, "%.1f") << " | " << Num(q.top4_share_sum / n, "%.3f")
          << " | " << Num(q.lambda_sigma1_sq_sum / n, "%.3g") << " | " << Num(q.lambda_sigma_r_sq_sum / n, "%.3g")
          << " |\n";
    }
  }
}

void PrintNeedle(std::ostream& out, const NeedleResult& n) {
  if (n.cells.empty()) return;
  out << "\n### Needle in a haystack\n\nNeedle \"" << n.needle_template << "\" inside the text (prefilled); then \""
      << absl::StrReplaceAll(n.question, {{"\n", "\\n"}})
      << "\" and the number go through the decode path. Cell: mean log p(number) over trials,"
         " in brackets greedy exact matches / trials. \"no needle\": fp16 on the same text without the needle.\n\n";
  out << "| context | depth | no needle |";
  for (const NeedleFormatScores& f : n.cells[0].formats) out << " " << f.label << " |";
  out << "\n| --- | --- | --- |";
  for (size_t i = 0; i < n.cells[0].formats.size(); ++i) out << " --- |";
  out << "\n";
  std::vector<NeedleFormatScores> total = n.cells[0].formats;
  for (NeedleFormatScores& t : total) t = NeedleFormatScores{t.label};
  double control = 0;
  int64_t cases = 0;
  for (const NeedleCell& cell : n.cells) {
    out << "| " << cell.context << " | " << absl::StrFormat("%.2f", cell.depth) << " | "
        << absl::StrFormat("%.2f", cell.control_logprob_sum / cell.cases) << " |";
    control += cell.control_logprob_sum;
    cases += cell.cases;
    for (size_t f = 0; f < cell.formats.size(); ++f) {
      const NeedleFormatScores& s = cell.formats[f];
      out << absl::StrFormat(" %.2f (%d/%d) |", s.logprob_sum / s.cases, s.exact, s.cases);
      total[f].cases += s.cases;
      total[f].logprob_sum += s.logprob_sum;
      total[f].abs_delta_logprob_sum += s.abs_delta_logprob_sum;
      total[f].exact += s.exact;
      total[f].first_rank_sum += s.first_rank_sum;
    }
    out << "\n";
  }
  out << "\nOver all " << cases << " cases (fp16 without the needle: mean log p "
      << absl::StrFormat("%.3f", control / std::max<int64_t>(cases, 1)) << "):\n\n"
      << "| format | mean log p(number) | mean abs Δ log p vs fp16 | greedy exact | mean rank of first token |\n"
      << "| --- | --- | --- | --- | --- |\n";
  for (const NeedleFormatScores& t : total) {
    out << absl::StrFormat("| %s | %.3f | %.4f | %d/%d | %.2f |\n", t.label, t.logprob_sum / t.cases,
                           t.abs_delta_logprob_sum / t.cases, t.exact, t.cases, t.first_rank_sum / t.cases);
  }
}

ordered_json DifferenceJson(const PairedDifference& d) {
  return {{"mean", J(d.mean)}, {"standard_error", J(d.standard_error)}, {"tokens", d.tokens}};
}

ordered_json ScoresJson(const FormatScores& s, const FormatScores& ref) {
  const double ref_ppl = ref.perplexity();
  ordered_json attention = ordered_json::array(), isolated = ordered_json::array();
  for (double v : s.attention_rel_l2()) attention.push_back(J(v));
  for (double v : s.isolated_rel_l2()) isolated.push_back(J(v));
  return {{"label", s.label},
          {"method", s.method},
          {"k_bits", s.k_bits},
          {"v_bits", s.v_bits},
          {"tokens", s.tokens},
          {"perplexity", J(s.perplexity())},
          {"perplexity_change", J(s.perplexity() / ref_ppl - 1.0)},
          {"mean_nll", J(s.mean_nll())},
          {"nll_minus_fp16", DifferenceJson(NllDifference(s, ref))},
          {"mean_abs_logit_error", J(s.mean_abs_logit_error())},
          {"max_abs_logit_error", J(s.max_abs_logit_error)},
          {"mean_kl_fp16_to_format", J(s.mean_kl())},
          {"top1_agreement", J(s.top1_agreement())},
          {"attention_rel_l2_own_per_layer", attention},
          {"attention_rel_l2_isolated_per_layer", isolated},
          {"attention_rel_l2_own_mean", J(s.mean_attention_rel_l2())},
          {"attention_rel_l2_isolated_mean", J(s.mean_isolated_rel_l2())}};
}

}  // namespace

void PrintReport(std::ostream& out, const RunInfo& info, const std::vector<ContextResult>& contexts,
                 const NeedleResult* needle) {
  out << "## squat-eval\n\n`" << info.command << "`\n\nModel " << info.model_dir << ": " << info.layers
      << " layers, " << info.heads << " query heads / " << info.kv_heads << " KV heads, head_dim " << info.head_dim
      << ", vocab " << info.vocab << "; " << info.device << ", " << info.dtype << ". Text " << info.text_path << ": "
      << info.text_tokens << " tokens. KV settings: " << info.settings << ". Total "
      << absl::StrFormat("%.0f", info.seconds) << " s.\n";
  for (const ContextResult& c : contexts) PrintPerplexity(out, c);
  if (needle != nullptr) PrintNeedle(out, *needle);
}

absl::Status WriteJson(const std::string& path, const RunInfo& info, const std::vector<ContextResult>& contexts,
                       const NeedleResult* needle) {
  ordered_json root = {{"command", info.command},
                       {"model_dir", info.model_dir},
                       {"text", info.text_path},
                       {"device", info.device},
                       {"dtype", info.dtype},
                       {"model", {{"layers", info.layers}, {"heads", info.heads}, {"kv_heads", info.kv_heads},
                                  {"head_dim", info.head_dim}, {"vocab", info.vocab}}},
                       {"text_tokens", info.text_tokens},
                       {"kv_settings", info.settings},
                       {"seconds", info.seconds}};
  ordered_json ppl = ordered_json::array();
  for (const ContextResult& c : contexts) {
    ordered_json formats = ordered_json::array();
    for (const FormatScores& s : c.formats) formats.push_back(ScoresJson(s, c.formats[0]));
    ordered_json pairs = ordered_json::array();
    for (const auto& [squat, kivi] : SquatKiviPairs(c.formats)) {
      const FormatScores& a = Find(c.formats, squat);
      const FormatScores& b = Find(c.formats, kivi);
      pairs.push_back({{"squat", squat}, {"kivi", kivi}, {"nll_difference", DifferenceJson(NllDifference(a, b))},
                       {"kl_ratio", J(a.mean_kl() / b.mean_kl())},
                       {"abs_logit_error_ratio", J(a.mean_abs_logit_error() / b.mean_abs_logit_error())},
                       {"isolated_attention_ratio", J(a.mean_isolated_rel_l2() / b.mean_isolated_rel_l2())}});
    }
    ordered_json queries = ordered_json::array();
    for (const QueryStats& q : c.query_stats) {
      const double n = static_cast<double>(std::max<int64_t>(q.samples, 1));
      queries.push_back({{"effective_rank", q.effective_rank_sum / n}, {"top4_share", q.top4_share_sum / n},
                         {"lambda_sigma1_sq", q.lambda_sigma1_sq_sum / n},
                         {"lambda_sigma_r_sq", q.lambda_sigma_r_sq_sum / n}});
    }
    ppl.push_back({{"context", c.plan.context}, {"prefix", c.plan.prefix}, {"scored_per_window", c.plan.scored},
                   {"windows", c.plan.starts.size()}, {"windows_available", c.plan.available},
                   {"window_starts", c.plan.starts}, {"seconds", c.seconds}, {"formats", formats},
                   {"squat_vs_kivi", pairs},
                   {"query_stats_per_layer", queries}});
  }
  root["perplexity"] = ppl;
  if (needle != nullptr) {
    ordered_json cells = ordered_json::array();
    for (const NeedleCell& cell : needle->cells) {
      ordered_json formats = ordered_json::array();
      for (const NeedleFormatScores& s : cell.formats) {
        formats.push_back({{"label", s.label}, {"cases", s.cases}, {"mean_logprob", s.logprob_sum / s.cases},
                           {"mean_abs_delta_logprob", s.abs_delta_logprob_sum / s.cases}, {"exact", s.exact},
                           {"mean_first_rank", s.first_rank_sum / s.cases}});
      }
      cells.push_back({{"context", cell.context}, {"depth", cell.depth}, {"cases", cell.cases},
                       {"no_needle_mean_logprob", cell.control_logprob_sum / cell.cases}, {"formats", formats}});
    }
    root["needle"] = {{"needle", needle->needle_template}, {"question", needle->question},
                      {"seconds", needle->seconds}, {"cells", cells}};
  }
  std::ofstream file(path);
  file << root.dump(2) << "\n";
  if (!file) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace squat::eval
