#include "tools/eval/step_metrics.h"

#include <algorithm>

namespace squat::eval {

void ScoreStep(const at::Tensor& logits, int64_t target, std::vector<FormatScores>* scores) {
  const at::Tensor l = logits.to(at::kDouble);
  const at::Tensor logp = at::log_softmax(l, -1);
  const at::Tensor ref_logp = logp.select(0, 0);
  const at::Tensor abs_diff = (l - l.select(0, 0)).abs();
  const at::Tensor kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1);
  const at::Tensor agree = (l.argmax(-1) == l.select(0, 0).argmax()).to(at::kDouble);
  // One host transfer per step: [F, 5].
  const at::Tensor rows =
      at::stack({-logp.select(1, target), abs_diff.mean(-1), abs_diff.amax(-1), kl, agree}, 1).cpu().contiguous();
  const auto a = rows.accessor<double, 2>();
  for (int64_t f = 0; f < rows.size(0); ++f) {
    FormatScores& s = (*scores)[f];
    s.tokens += 1;
    s.nll_sum += a[f][0];
    s.token_nll.push_back(a[f][0]);
    s.abs_logit_error_sum += a[f][1];
    s.max_abs_logit_error = std::max(s.max_abs_logit_error, a[f][2]);
    s.kl_sum += a[f][3];
    s.top1_agreements += a[f][4] > 0.5 ? 1 : 0;
  }
}

void ScoreAttention(const FormatRun& run, int64_t num_layers, std::vector<FormatScores>* scores) {
  const int64_t formats = static_cast<int64_t>(run.num_formats());
  std::vector<at::Tensor> own_rows, isolated_rows;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outs, iso;
    for (int64_t f = 0; f < formats; ++f) outs.push_back(run.attention(f, layer).reshape({-1}));
    const at::Tensor all = at::stack(outs).to(at::kDouble);  // [F, H_q * d]
    const at::Tensor ref = all.select(0, 0);
    // Row-wise L2 norms spelled out: the norm() overloads differ between LibTorch 1.13 and 2.x.
    auto row_norms = [](const at::Tensor& x) { return x.pow(2).sum(-1).sqrt(); };
    const at::Tensor ref_norm = row_norms(ref);
    own_rows.push_back(row_norms(all - ref) / ref_norm);
    if (run.isolated() && formats > 1) {
      for (int64_t f = 1; f < formats; ++f) iso.push_back(run.isolated_attention(f, layer).reshape({-1}));
      const at::Tensor shadows = at::stack(iso).to(at::kDouble);
      isolated_rows.push_back(at::cat({at::zeros({1}, ref.options()), row_norms(shadows - ref) / ref_norm}));
    }
  }
  const at::Tensor own = at::stack(own_rows).cpu().contiguous();  // [layers, F]
  const at::Tensor isolated = isolated_rows.empty() ? at::Tensor() : at::stack(isolated_rows).cpu().contiguous();
  const auto own_a = own.accessor<double, 2>();
  for (int64_t f = 0; f < formats; ++f) {
    FormatScores& s = (*scores)[f];
    s.attention_rel_l2_sum.resize(num_layers, 0.0);
    for (int64_t layer = 0; layer < num_layers; ++layer) s.attention_rel_l2_sum[layer] += own_a[layer][f];
    s.attention_steps += 1;
    if (isolated.defined()) {
      const auto iso_a = isolated.accessor<double, 2>();
      s.isolated_rel_l2_sum.resize(num_layers, 0.0);
      for (int64_t layer = 0; layer < num_layers; ++layer) s.isolated_rel_l2_sum[layer] += iso_a[layer][f];
      s.isolated_steps += 1;
    }
  }
}

void AddQueryStats(const std::vector<at::Tensor>& grams, double lambda, int64_t subspace_dim,
                   std::vector<QueryStats>* stats) {
  stats->resize(grams.size());
  for (size_t layer = 0; layer < grams.size(); ++layer) {
    if (!grams[layer].defined()) continue;
    const at::Tensor g = grams[layer].cpu();
    const at::Tensor eig = at::linalg_eigvalsh((g + g.transpose(1, 2)) * 0.5).clamp_min(0.0).flip({1});  // [H_kv, d], descending
    const int64_t d = eig.size(1);
    const int64_t r = std::min<int64_t>(subspace_dim, d);
    for (int64_t h = 0; h < eig.size(0); ++h) {
      const at::Tensor e = eig[h];
      const double total = e.sum().item<double>();
      if (total <= 0) continue;
      const at::Tensor p = e / total;
      const double entropy = -(p * at::log(p.clamp_min(1e-300))).sum().item<double>();
      QueryStats& q = (*stats)[layer];
      q.samples += 1;
      q.effective_rank_sum += std::exp(entropy);
      q.top4_share_sum += e.narrow(0, 0, std::min<int64_t>(4, d)).sum().item<double>() / total;
      q.lambda_sigma1_sq_sum += lambda * e[0].item<double>();
      q.lambda_sigma_r_sq_sum += lambda * e[r - 1].item<double>();
    }
  }
}

}  // namespace squat::eval
