// Shape / dtype / device checks of SequenceKvCache::Attend arguments. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <c10/util/Exception.h>

#include "kvcache/kv_cache.h"

namespace squat::kv {

inline void CheckAttendTensor(const char* name, const at::Tensor& x, int64_t heads, int64_t tokens,
                              const KvModelShape& shape) {
  TORCH_CHECK(x.defined(), "Attend: ", name, " is undefined");
  TORCH_CHECK(x.dim() == 3 && x.size(0) == heads && x.size(1) == tokens && x.size(2) == shape.head_dim,
              "Attend: ", name, " must be [", heads, ", ", tokens, ", ", shape.head_dim, "], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == shape.compute_dtype, "Attend: ", name, " must be ", shape.compute_dtype,
              ", got ", x.scalar_type());
  TORCH_CHECK(x.device() == shape.device, "Attend: ", name, " must be on ", shape.device, ", got ", x.device());
}

// Checks q_rot, the key tensor(s) the format reads and v; returns T.
inline int64_t CheckAttendInputs(const KvModelShape& shape, bool needs_k_pre, const at::Tensor& q_rot,
                                 const at::Tensor& k_pre, const at::Tensor& k_rot, const at::Tensor& v) {
  TORCH_CHECK(q_rot.defined() && q_rot.dim() == 3 && q_rot.size(1) > 0,
              "Attend: q_rot must be [H_q, T, d] with T > 0");
  const int64_t tokens = q_rot.size(1);
  CheckAttendTensor("q_rot", q_rot, shape.num_attention_heads, tokens, shape);
  CheckAttendTensor("k_rot", k_rot, shape.num_kv_heads, tokens, shape);
  if (needs_k_pre) CheckAttendTensor("k_pre", k_pre, shape.num_kv_heads, tokens, shape);
  CheckAttendTensor("v", v, shape.num_kv_heads, tokens, shape);
  return tokens;
}

}  // namespace squat::kv
