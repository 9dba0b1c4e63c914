#include "kvcache/rope.h"

#include <c10/util/Exception.h>

namespace squat::kv {

at::Tensor BuildRopeTable(const at::Tensor& inv_freq, int64_t positions, at::Device device) {
  TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.numel() > 0 && positions > 0, "RoPE table: need inv_freq [d / 2] and ",
              "positions > 0, got ", inv_freq.sizes(), " and ", positions);
  const at::Tensor freq = inv_freq.to(device, at::kFloat);
  const at::Tensor angles = at::outer(at::arange(positions, at::TensorOptions().dtype(at::kFloat).device(device)), freq);
  const at::Tensor wide = angles.to(at::kDouble);
  return at::cat({wide.cos(), wide.sin()}, 1).to(at::kFloat).contiguous();
}

namespace {

RopeAngles Split(const at::Tensor& rows, at::ScalarType dtype) {
  const int64_t half = rows.size(1) / 2;
  const at::Tensor cos = rows.narrow(1, 0, half), sin = rows.narrow(1, half, half);
  return {at::cat({cos, cos}, 1).to(dtype), at::cat({sin, sin}, 1).to(dtype)};
}

}  // namespace

RopeAngles RopeRows(const at::Tensor& table, const at::Tensor& positions, at::ScalarType dtype) {
  return Split(table.index_select(0, positions), dtype);
}

RopeAngles RopeRange(const at::Tensor& table, int64_t first, int64_t count, at::ScalarType dtype) {
  TORCH_CHECK(first >= 0 && first + count <= table.size(0), "RoPE table: positions [", first, ", ", first + count,
              ") beyond its ", table.size(0), " rows");
  return Split(table.narrow(0, first, count), dtype);
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // Halves in place rather than materialising rotate_half(x): the same roundings (x1 c - x2 s
  // is x1 c + (-x2) s exactly), fewer passes over x.
  const int64_t half = x.size(-1) / 2;
  at::Tensor out = x * cos;
  out.narrow(-1, 0, half).sub_(x.narrow(-1, half, half) * sin.narrow(-1, 0, half));
  out.narrow(-1, half, half).add_(x.narrow(-1, 0, half) * sin.narrow(-1, half, half));
  return out;
}

}  // namespace squat::kv
