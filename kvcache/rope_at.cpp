#include "kvcache/rope_at.h"

namespace squat::kv {

at::Tensor ApplyRopeAt(const at::Tensor& x, int64_t first_position, const at::Tensor& inv_freq) {
  const int64_t count = x.size(1), half = x.size(2) / 2;
  at::Tensor positions = at::arange(first_position, first_position + count,
                                    at::TensorOptions().dtype(at::kFloat).device(x.device()));
  at::Tensor freqs = at::outer(positions, inv_freq.to(x.device(), at::kFloat));
  at::Tensor angles = at::cat({freqs, freqs}, -1);
  at::Tensor cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

}  // namespace squat::kv
