// Rotate-half RoPE (HF Llama convention) of cached keys at their positions, for formats that
// store keys before RoPE. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace squat::kv {

// x [H, N, d] at positions [first_position, first_position + N); inv_freq [d / 2] float32.
// Angles are float32 products cast to x's dtype before rotating, as the model does, so that a
// full-precision key rotated here equals the model's own k_rot.
at::Tensor ApplyRopeAt(const at::Tensor& x, int64_t first_position, const at::Tensor& inv_freq);

}  // namespace squat::kv
