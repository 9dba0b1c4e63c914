// RoPE (rotate-half, HF Llama convention) from one angle table per model: the model rotates q
// and k with it, the attention backends rotate pre-RoPE keys with it, and the kernels read it
// (kernels/page_layout.h), so that all three use the same cos and sin bits for a position.
// Internal to kvcache/ and runtime/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace squat::kv {

// float32 [positions, d] on `device`: row p holds cos(a_j) for j < d / 2, then sin(a_j), where
// a_j = p * inv_freq[j] is the float32 product (as HF forms it) and cos / sin are taken in
// float64 and rounded once, so that a row does not depend on where or how it was computed.
at::Tensor BuildRopeTable(const at::Tensor& inv_freq, int64_t positions, at::Device device);

// cos and sin [N, d] (the halves duplicated, as rotate-half wants them) in `dtype` of the
// table's rows `positions` (int32 or int64 [N] on the table's device).
struct RopeAngles {
  at::Tensor cos, sin;
};
RopeAngles RopeRows(const at::Tensor& table, const at::Tensor& positions, at::ScalarType dtype);
// The same for the consecutive positions [first, first + count).
RopeAngles RopeRange(const at::Tensor& table, int64_t first, int64_t count, at::ScalarType dtype);

// x * cos + rotate_half(x) * sin in x's dtype (cos and sin in x's dtype, broadcast against x's
// trailing [..., d]); each product and the sum are rounded, as the kernels' RotatePair does.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace squat::kv
