// What squat-eval accumulates per KV format (torch-free, so that reporting needs no ATen).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace squat::eval {

// One format's agreement with the full-precision cache over the scored decode steps.
struct FormatScores {
  std::string label;   // "fp16", "kivi2", "squat4", ...
  std::string method;  // kv::KvMethodName
  int k_bits = 16, v_bits = 16;
  int64_t tokens = 0;      // predictions scored
  double nll_sum = 0;      // -log p(target), natural log
  std::vector<double> token_nll;  // each scored token's -log p, in scoring order
  double abs_logit_error_sum = 0;  // per token: mean over the vocabulary of |logit - fp16 logit|
  double max_abs_logit_error = 0;  // over every token and vocabulary entry
  double kl_sum = 0;               // per token: KL(fp16 || format), nats
  int64_t top1_agreements = 0;     // argmax equals fp16's argmax
  // Per layer, summed over decode steps: ||o - o_fp16|| / ||o_fp16|| of the attention output
  // (all query heads). "own": the format's own run (error carried from earlier layers and
  // tokens included); "isolated": the format's cache fed the fp16 run's q/k/v, i.e. the error
  // of the cache alone.
  std::vector<double> attention_rel_l2_sum;
  std::vector<double> isolated_rel_l2_sum;
  int64_t attention_steps = 0;
  int64_t isolated_steps = 0;

  // Adds another tally of the same format (e.g. one window's).
  void Merge(const FormatScores& other);
  // The same format with nothing counted.
  FormatScores Empty() const {
    FormatScores s;
    s.label = label;
    s.method = method;
    s.k_bits = k_bits;
    s.v_bits = v_bits;
    return s;
  }

  double perplexity() const;
  double mean_nll() const;
  double mean_abs_logit_error() const;
  double mean_kl() const;
  double top1_agreement() const;
  std::vector<double> attention_rel_l2() const;  // per layer means
  std::vector<double> isolated_rel_l2() const;
  double mean_attention_rel_l2() const;  // over layers; NaN when not measured
  double mean_isolated_rel_l2() const;
};

// Mean over tokens of a's NLL minus b's (both scored on the same tokens in the same order) and
// its standard error with tokens taken as independent (they are not quite: neighbours share
// context), so read it as a yardstick for noise, not a test.
struct PairedDifference {
  double mean = 0;
  double standard_error = 0;
  int64_t tokens = 0;
};
PairedDifference NllDifference(const FormatScores& a, const FormatScores& b);

// Shape of the prompt's post-RoPE queries per layer (the input of SQuat's subspace), averaged
// over KV heads and windows. Eigenvalues sigma_i^2 of each KV head's query Gram (its query
// heads' rows stacked, as SQuat builds it).
struct QueryStats {
  int64_t samples = 0;             // (window, KV head) pairs summed
  double effective_rank_sum = 0;   // exp(entropy of sigma_i^2 / sum sigma^2)
  double top4_share_sum = 0;       // share of sum sigma^2 in the 4 largest directions
  double lambda_sigma1_sq_sum = 0; // lambda * sigma_1^2 (spec pitfall 7)
  double lambda_sigma_r_sq_sum = 0;  // lambda * sigma_r^2, r = the subspace dim used (capped at d)
};

}  // namespace squat::eval
