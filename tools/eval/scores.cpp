#include "tools/eval/scores.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace squat::eval {
namespace {

std::vector<double> Means(const std::vector<double>& sums, int64_t count) {
  std::vector<double> out;
  for (double s : sums) out.push_back(count > 0 ? s / static_cast<double>(count) : std::nan(""));
  return out;
}

double MeanOf(const std::vector<double>& values) {
  if (values.empty()) return std::nan("");
  double sum = 0;
  for (double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

double Ratio(double sum, int64_t count) {
  return count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

void FormatScores::Merge(const FormatScores& o) {
  tokens += o.tokens;
  nll_sum += o.nll_sum;
  token_nll.insert(token_nll.end(), o.token_nll.begin(), o.token_nll.end());
  abs_logit_error_sum += o.abs_logit_error_sum;
  max_abs_logit_error = std::max(max_abs_logit_error, o.max_abs_logit_error);
  kl_sum += o.kl_sum;
  top1_agreements += o.top1_agreements;
  auto add = [](std::vector<double>* into, const std::vector<double>& from) {
    if (into->size() < from.size()) into->resize(from.size(), 0.0);
    for (size_t i = 0; i < from.size(); ++i) (*into)[i] += from[i];
  };
  add(&attention_rel_l2_sum, o.attention_rel_l2_sum);
  add(&isolated_rel_l2_sum, o.isolated_rel_l2_sum);
  attention_steps += o.attention_steps;
  isolated_steps += o.isolated_steps;
}

double FormatScores::mean_nll() const { return Ratio(nll_sum, tokens); }
double FormatScores::perplexity() const { return std::exp(mean_nll()); }
double FormatScores::mean_abs_logit_error() const { return Ratio(abs_logit_error_sum, tokens); }
double FormatScores::mean_kl() const { return Ratio(kl_sum, tokens); }
double FormatScores::top1_agreement() const { return Ratio(static_cast<double>(top1_agreements), tokens); }
std::vector<double> FormatScores::attention_rel_l2() const { return Means(attention_rel_l2_sum, attention_steps); }
std::vector<double> FormatScores::isolated_rel_l2() const { return Means(isolated_rel_l2_sum, isolated_steps); }
double FormatScores::mean_attention_rel_l2() const {
  return attention_steps > 0 ? MeanOf(attention_rel_l2()) : std::nan("");
}
double FormatScores::mean_isolated_rel_l2() const {
  return isolated_steps > 0 ? MeanOf(isolated_rel_l2()) : std::nan("");
}

PairedDifference NllDifference(const FormatScores& a, const FormatScores& b) {
  PairedDifference d;
  const size_t n = std::min(a.token_nll.size(), b.token_nll.size());
  d.tokens = static_cast<int64_t>(n);
  if (n == 0) {
    d.mean = d.standard_error = std::nan("");
    return d;
  }
  double sum = 0, sum_sq = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = a.token_nll[i] - b.token_nll[i];
    sum += x;
    sum_sq += x * x;
  }
  d.mean = sum / static_cast<double>(n);
  const double variance = n > 1 ? std::max(0.0, (sum_sq - sum * d.mean) / static_cast<double>(n - 1)) : 0.0;
  d.standard_error = std::sqrt(variance / static_cast<double>(n));
  return d;
}

}  // namespace squat::eval
