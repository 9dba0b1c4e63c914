// Full-precision causal attention with GQA, shared by the prefill path and the fp16 format.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace squat::kv {

// T queries at positions [start, start + T) attend over keys/values of positions [0, start + T).
// q [H_q, T, d]; keys, values [H_kv, start + T, d]; query head j reads KV head j / (H_q / H_kv).
// Scale 1/sqrt(d), softmax in float32. Returns [H_q, T, d] in q's dtype.
at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                           int64_t start);

}  // namespace squat::kv
