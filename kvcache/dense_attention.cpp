#include "kvcache/dense_attention.h"

#include <torch/version.h>

#include <cmath>
#include <limits>

// at::scaled_dot_product_attention takes `scale` from 2.1 and `enable_gqa` from 2.5.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define SQUAT_HAVE_SDPA 1
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
#define SQUAT_SDPA_GQA 1
#endif
#endif

namespace squat::kv {

at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           int64_t start) {
  const int64_t heads = q.size(0), num_tokens = q.size(1), head_dim = q.size(2);
  const int64_t kv_heads = keys.size(0), total = keys.size(1), group = heads / kv_heads;
  TORCH_CHECK(total == start + num_tokens, "CausalAttention: ", total, " keys for queries at [",
              start, ", ", start + num_tokens, ")");

  // Causal mask over cache + new tokens (true = hidden): query t sees keys <= start + t.
  at::Tensor hidden_mask;
  if (num_tokens > 1) {
    auto long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    hidden_mask = at::arange(total, long_opts).unsqueeze(0) > at::arange(start, total, long_opts).unsqueeze(1);
  }
#ifdef SQUAT_HAVE_SDPA
  if (num_tokens > 1) {
    at::Tensor k4 = keys.unsqueeze(0), v4 = values.unsqueeze(0);
#ifndef SQUAT_SDPA_GQA
    if (group > 1) {
      k4 = k4.repeat_interleave(group, 1);
      v4 = v4.repeat_interleave(group, 1);
    }
#endif
    // With no cached prefix the causal mask is the plain lower triangle.
    c10::optional<at::Tensor> visible;
    if (start > 0) visible = hidden_mask.logical_not();
    return at::scaled_dot_product_attention(q.unsqueeze(0), k4, v4, visible, /*dropout_p=*/0.0,
                                            /*is_causal=*/start == 0, /*scale=*/c10::optional<double>()
#ifdef SQUAT_SDPA_GQA
                                                                          ,
                                            /*enable_gqa=*/group > 1
#endif
                                            )
        .squeeze(0);
  }
#endif
  // Query heads grouped by the KV head they share, so the keys are read in place, never repeated.
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::Tensor grouped = q.reshape({kv_heads, group * num_tokens, head_dim});
  at::Tensor scores = at::matmul(grouped, keys.transpose(1, 2)).mul_(scale);
  if (hidden_mask.defined()) {
    scores.view({kv_heads, group, num_tokens, total})
        .masked_fill_(hidden_mask, -std::numeric_limits<double>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, values).view({heads, num_tokens, head_dim});
}

}  // namespace squat::kv
