// KIVI / SQuat quantization math (spec sections 4-6). Small dense algebra in float64;
// quantization vectorised with ATen ops over tokens and channels (one pass per channel block).
#include "kvcache/squat_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

namespace squat::kv {
namespace {

// The reference adds this ridge to every g x g block before inverting it (spec 4.3 (a)).
constexpr double kSchurRidge = 1e-7;

void CheckSubspace(const QuerySubspace& subspace, int64_t head_dim) {
  TORCH_CHECK(subspace.basis.defined() && subspace.sigma2.defined(), "QuerySubspace is empty");
  TORCH_CHECK(subspace.basis.dim() == 2 && subspace.basis.size(0) == head_dim, "subspace basis must be [",
              head_dim, ", r], got ", subspace.basis.sizes());
  TORCH_CHECK(subspace.sigma2.dim() == 1 && subspace.sigma2.size(0) == subspace.basis.size(1),
              "sigma2 must be [", subspace.basis.size(1), "], got ", subspace.sigma2.sizes());
}

// basis diag(weights) basis^T, symmetrised so that Cholesky and friends see an exactly
// symmetric matrix.
at::Tensor WeightedProjector(const at::Tensor& basis, const at::Tensor& weights) {
  at::Tensor product = (basis * weights.unsqueeze(0)).mm(basis.t());
  return (product + product.t()) * 0.5;
}

// Sigma = P^-1 = I - V diag(lambda s2 / (1 + lambda s2)) V^T (Woodbury; exact, well conditioned).
at::Tensor MetricInverse(const QuerySubspace& subspace, double lambda, int64_t head_dim) {
  const at::Tensor basis = subspace.basis.to(at::kDouble);
  const at::Tensor scaled = subspace.sigma2.to(at::kDouble) * lambda;
  return at::eye(head_dim, basis.options()) - WeightedProjector(basis, scaled / (scaled + 1.0));
}

// Rows [row, row + rows), columns [col, col + cols).
at::Tensor Block(const at::Tensor& m, int64_t row, int64_t rows, int64_t col, int64_t cols) {
  return m.narrow(0, row, rows).narrow(1, col, cols);
}

std::vector<at::Tensor> CompensationByCholesky(const at::Tensor& sigma, int64_t head_dim,
                                               int64_t block_size) {
  // Sigma = L L^T = U^T U with U = L^T upper, so Sigma_FF^-1 Sigma_FR = U_FF^-1 U_FR and its
  // last block row is U_BB^-1 U_BR.
  const at::Tensor upper = at::linalg_cholesky(sigma).t().contiguous();
  const int64_t blocks = head_dim / block_size;
  std::vector<at::Tensor> result;
  for (int64_t i = 0; i + 1 < blocks; ++i) {
    const int64_t start = i * block_size, rest = (i + 1) * block_size;
    result.push_back(at::linalg_solve_triangular(Block(upper, start, block_size, start, block_size),
                                                 Block(upper, start, block_size, rest, head_dim - rest),
                                                 /*upper=*/true));
  }
  return result;
}

std::vector<at::Tensor> CompensationByWoodbury(const at::Tensor& sigma, int64_t head_dim,
                                               int64_t block_size) {
  const int64_t blocks = head_dim / block_size;
  std::vector<at::Tensor> result;
  for (int64_t i = 0; i + 1 < blocks; ++i) {
    const int64_t fixed = (i + 1) * block_size;
    const at::Tensor conditional =
        at::linalg_solve(Block(sigma, 0, fixed, 0, fixed), Block(sigma, 0, fixed, fixed, head_dim - fixed));
    result.push_back(conditional.narrow(0, i * block_size, block_size).contiguous());
  }
  return result;
}

// The reference's route: A_T = P, A_t = M - N^T (O + ridge I)^-1 N (Schur complement of the
// last block), so A_t = (Sigma over the first t blocks)^-1; C_i = rows B_i of A_{i+1} times
// Sigma_{F_i R_i}, with Sigma from a separate inversion of P.
std::vector<at::Tensor> CompensationBySchur(const QuerySubspace& subspace, double lambda, int64_t head_dim,
                                            int64_t block_size) {
  const at::Tensor metric = SquatMetric(subspace, lambda, head_dim);
  const at::Tensor sigma = at::linalg_inv(metric);
  const int64_t blocks = head_dim / block_size;
  const at::Tensor ridge = at::eye(block_size, metric.options()) * kSchurRidge;

  std::vector<at::Tensor> last_rows(std::max<int64_t>(blocks - 1, 0));  // entry t-1: rows of A_t
  at::Tensor a = metric;
  for (int64_t t = blocks - 1; t >= 1; --t) {
    const int64_t kept = t * block_size;
    const at::Tensor top_left = Block(a, 0, kept, 0, kept);
    const at::Tensor bottom_left = Block(a, kept, block_size, 0, kept);
    const at::Tensor bottom_right = Block(a, kept, block_size, kept, block_size);
    a = top_left - bottom_left.t().mm(at::linalg_inv(bottom_right + ridge)).mm(bottom_left);
    last_rows[t - 1] = a.narrow(0, kept - block_size, block_size);
  }
  std::vector<at::Tensor> result;
  for (int64_t i = 0; i + 1 < blocks; ++i) {
    const int64_t fixed = (i + 1) * block_size;
    result.push_back(last_rows[i].mm(Block(sigma, 0, fixed, fixed, head_dim - fixed)));
  }
  return result;
}

// Asymmetric min-max grid over `dim` (kept as size 1 in scale/min). scale and min are rounded
// to meta_dtype first, so codes and dequantized values come from what is stored.
struct Grid {
  at::Tensor codes;    // vals' dtype, integral values
  at::Tensor scale;    // meta dtype
  at::Tensor min;      // meta dtype
  at::Tensor dequant;  // vals' dtype
};

Grid QuantizeAlong(const at::Tensor& vals, int64_t dim, int bits, at::ScalarType meta_dtype) {
  const double max_code = static_cast<double>((1 << bits) - 1);
  const at::Tensor lo = vals.amin(dim, /*keepdim=*/true);
  const at::Tensor hi = vals.amax(dim, /*keepdim=*/true);
  Grid grid;
  grid.scale = ((hi - lo) / max_code).to(meta_dtype);
  grid.min = lo.to(meta_dtype);
  const at::Tensor scale = grid.scale.to(vals.scalar_type());
  const at::Tensor min = grid.min.to(vals.scalar_type());
  // Zero range (or a range below the meta dtype's resolution): code 0, dequantizes to min.
  const at::Tensor zero_range = scale == 0;
  const at::Tensor divisor = scale.masked_fill(zero_range, 1.0);
  grid.codes = at::round((vals - min) / divisor).clamp_(0.0, max_code).masked_fill_(zero_range, 0);
  grid.dequant = grid.codes * scale + min;
  return grid;
}

void CheckBits(int bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "quantization bits must be in [1, 8], got ", bits);
}

int64_t CodesPerWord(int bits) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8,
              "packing needs bits dividing 32 (1, 2, 4, 8), got ", bits);
  return 32 / bits;
}

}  // namespace

at::Tensor QueryGram(const at::Tensor& query_rows) {
  TORCH_CHECK(query_rows.dim() == 2, "query rows must be [n, d], got ", query_rows.sizes());
  const at::Tensor rows = query_rows.to(at::kDouble);
  return rows.t().mm(rows);
}

QuerySubspace SubspaceFromGram(const at::Tensor& gram, int64_t r, int64_t max_rank) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1), "Gram matrix must be square, got ",
              gram.sizes());
  TORCH_CHECK(r >= 0 && max_rank >= 0, "subspace rank and max_rank must be >= 0");
  const int64_t dim = gram.size(0);
  const int64_t rank = std::min({r, dim, max_rank});
  const at::Tensor sym = gram.to(at::kDouble);
  TORCH_CHECK(at::isfinite(sym).all().item<bool>(), "Gram matrix has non-finite entries");
  auto [eigenvalues, eigenvectors] = at::linalg_eigh((sym + sym.t()) * 0.5);  // ascending
  QuerySubspace subspace;
  // Round-off can leave eigenvalues of a PSD Gram slightly negative.
  subspace.sigma2 = eigenvalues.narrow(0, dim - rank, rank).flip({0}).clamp_min(0.0).contiguous();
  subspace.basis = eigenvectors.narrow(1, dim - rank, rank).flip({1}).contiguous();
  return subspace;
}

at::Tensor StackedCompensation(const at::Tensor& grams, int64_t r, int64_t max_rank, double lambda,
                               int64_t block_size, const EighFunction& eigh) {
  TORCH_CHECK(grams.dim() == 3 && grams.size(1) == grams.size(2), "Gram stack must be [H, d, d], got ",
              grams.sizes());
  TORCH_CHECK(std::isfinite(lambda) && lambda >= 0, "squat lambda must be finite and >= 0, got ", lambda);
  const int64_t heads = grams.size(0), dim = grams.size(1);
  TORCH_CHECK(block_size > 0 && dim % block_size == 0, "block size ", block_size, " must divide head_dim ", dim);
  const int64_t rank = std::min({r, dim, max_rank});
  at::Tensor sym = grams.to(at::kDouble);
  TORCH_CHECK(at::isfinite(sym).all().item<bool>(), "Gram matrix has non-finite entries");
  sym = (sym + sym.transpose(1, 2)) * 0.5;
  at::Tensor eigenvalues, eigenvectors;  // ascending
  if (eigh) {
    std::tie(eigenvalues, eigenvectors) = eigh(sym);
  } else {
    std::tie(eigenvalues, eigenvectors) = at::linalg_eigh(sym);
  }
  const at::Tensor sigma2 = eigenvalues.narrow(1, dim - rank, rank).clamp_min(0.0);
  const at::Tensor basis = eigenvectors.narrow(2, dim - rank, rank);
  // Sigma = P^-1 = I - V diag(lambda s2 / (1 + lambda s2)) V^T, then the Cholesky route.
  const at::Tensor scaled = sigma2 * lambda;
  at::Tensor projector = at::matmul(basis * (scaled / (scaled + 1.0)).unsqueeze(1), basis.transpose(1, 2));
  projector = (projector + projector.transpose(1, 2)) * 0.5;
  const at::Tensor sigma = at::eye(dim, sym.options()).unsqueeze(0) - projector;
  const at::Tensor upper = at::linalg_cholesky(sigma).transpose(1, 2).contiguous();
  std::vector<at::Tensor> blocks;
  for (int64_t start = 0; start + block_size < dim; start += block_size) {
    const int64_t rest = start + block_size;
    const at::Tensor diagonal = upper.narrow(1, start, block_size).narrow(2, start, block_size);
    const at::Tensor right = upper.narrow(1, start, block_size).narrow(2, rest, dim - rest);
    blocks.push_back(at::linalg_solve_triangular(diagonal, right, /*upper=*/true).reshape({heads, -1}));
  }
  if (blocks.empty()) return at::empty({heads, 0}, sym.options());
  return at::cat(blocks, 1);
}

at::Tensor ParallelStackedCompensation(const at::Tensor& grams, int64_t r, int64_t max_rank, double lambda,
                                       int64_t block_size) {
  TORCH_CHECK(grams.dim() == 3 && grams.size(1) == grams.size(2), "Gram stack must be [M, d, d], got ",
              grams.sizes());
  TORCH_CHECK(grams.device().is_cpu(), "ParallelStackedCompensation takes CPU matrices");
  const int64_t count = grams.size(0), dim = grams.size(1);
  TORCH_CHECK(block_size > 0 && dim % block_size == 0, "block size ", block_size, " must divide head_dim ", dim);
  int64_t floats = 0;
  for (int64_t start = 0; start + block_size < dim; start += block_size) {
    floats += block_size * (dim - start - block_size);
  }
  const at::Tensor input = grams.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({count, floats}, input.options());
  // Inside the parallel region ATen (and its LAPACK) runs single-threaded per slice.
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    out.narrow(0, begin, end - begin)
        .copy_(StackedCompensation(input.narrow(0, begin, end - begin), r, max_rank, lambda, block_size));
  });
  return out;
}

at::Tensor SquatMetric(const QuerySubspace& subspace, double lambda, int64_t head_dim) {
  CheckSubspace(subspace, head_dim);
  const at::Tensor basis = subspace.basis.to(at::kDouble);
  return at::eye(head_dim, basis.options()) +
         WeightedProjector(basis, subspace.sigma2.to(at::kDouble) * lambda);
}

std::vector<at::Tensor> CompensationMatrices(const QuerySubspace& subspace, double lambda, int64_t head_dim,
                                             int64_t block_size, CompensationMethod method) {
  CheckSubspace(subspace, head_dim);
  TORCH_CHECK(std::isfinite(lambda) && lambda >= 0, "squat lambda must be finite and >= 0, got ", lambda);
  TORCH_CHECK(block_size > 0 && head_dim % block_size == 0, "block size ", block_size,
              " must divide head_dim ", head_dim);
  // lambda = 0 makes Sigma exactly I in every route, hence exactly zero matrices.
  switch (method) {
    case CompensationMethod::kCholesky:
      return CompensationByCholesky(MetricInverse(subspace, lambda, head_dim), head_dim, block_size);
    case CompensationMethod::kWoodbury:
      return CompensationByWoodbury(MetricInverse(subspace, lambda, head_dim), head_dim, block_size);
    case CompensationMethod::kSchurRecursion:
      return CompensationBySchur(subspace, lambda, head_dim, block_size);
  }
  TORCH_CHECK(false, "unknown compensation method");
}

QuantizedTensor QuantizeKeys(const at::Tensor& x, int bits, int64_t group_size, int64_t block_size,
                             const std::vector<at::Tensor>& compensation, at::ScalarType meta_dtype) {
  CheckBits(bits);
  TORCH_CHECK(x.dim() == 2, "keys must be [N, d], got ", x.sizes());
  const int64_t tokens = x.size(0), dim = x.size(1);
  TORCH_CHECK(group_size > 0 && tokens % group_size == 0, "key count ", tokens,
              " must be a multiple of the group size ", group_size);
  TORCH_CHECK(block_size > 0 && dim % block_size == 0, "block size ", block_size, " must divide head_dim ",
              dim);
  const int64_t blocks = dim / block_size, groups = tokens / group_size;
  TORCH_CHECK(compensation.empty() || static_cast<int64_t>(compensation.size()) == blocks - 1, "expected ",
              blocks - 1, " compensation matrices, got ", compensation.size());
  std::vector<at::Tensor> feed_forward;
  for (size_t i = 0; i < compensation.size(); ++i) {
    const int64_t rest = dim - static_cast<int64_t>(i + 1) * block_size;
    TORCH_CHECK(compensation[i].dim() == 2 && compensation[i].size(0) == block_size &&
                    compensation[i].size(1) == rest,
                "compensation matrix ", i, " must be [", block_size, ", ", rest, "], got ",
                compensation[i].sizes());
    // Row-major whatever the caller passed: BLAS rounds a transposed operand differently, and
    // a flush must quantize exactly like the prefill that used the same C_i.
    feed_forward.push_back(compensation[i].to(x.options()).contiguous());
  }

  // Compensated targets, updated in place as blocks are fixed.
  at::Tensor target = x.contiguous().clone();
  const at::Tensor grouped = target.view({groups, group_size, dim});
  QuantizedTensor out;
  out.codes = at::empty({tokens, dim}, x.options().dtype(at::kByte));
  out.scale = at::empty({groups, dim}, x.options().dtype(meta_dtype));
  out.min = at::empty({groups, dim}, x.options().dtype(meta_dtype));
  const at::Tensor grouped_codes = out.codes.view({groups, group_size, dim});

  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t start = i * block_size;
    const at::Tensor current = grouped.narrow(2, start, block_size);  // [groups, G, g]
    const Grid grid = QuantizeAlong(current, /*dim=*/1, bits, meta_dtype);
    grouped_codes.narrow(2, start, block_size).copy_(grid.codes);
    out.scale.narrow(1, start, block_size).copy_(grid.scale.squeeze(1));
    out.min.narrow(1, start, block_size).copy_(grid.min.squeeze(1));
    if (i + 1 < blocks && !feed_forward.empty()) {
      // Error against the current target, pushed into the channels not yet quantized.
      const at::Tensor error = (grid.dequant - current).reshape({tokens, block_size});
      const int64_t rest = start + block_size;
      target.narrow(1, rest, dim - rest).add_(error.mm(feed_forward[i]));
    }
  }
  return out;
}

at::Tensor DequantizeKeys(const QuantizedTensor& q, int64_t group_size, at::ScalarType dtype) {
  TORCH_CHECK(q.codes.dim() == 2 && q.codes.size(0) % group_size == 0,
              "key codes must be [N, d] with N a multiple of ", group_size);
  const int64_t tokens = q.codes.size(0), dim = q.codes.size(1), groups = tokens / group_size;
  TORCH_CHECK(q.scale.sizes() == at::IntArrayRef({groups, dim}) && q.min.sizes() == q.scale.sizes(),
              "key scale/min must be [", groups, ", ", dim, "]");
  const at::Tensor codes = q.codes.to(dtype).view({groups, group_size, dim});
  return (codes * q.scale.to(dtype).unsqueeze(1) + q.min.to(dtype).unsqueeze(1)).view({tokens, dim});
}

QuantizedTensor QuantizeValues(const at::Tensor& x, int bits, int64_t group_size, at::ScalarType meta_dtype) {
  CheckBits(bits);
  TORCH_CHECK(x.dim() == 2, "values must be [N, d], got ", x.sizes());
  const int64_t tokens = x.size(0), dim = x.size(1);
  TORCH_CHECK(group_size > 0 && dim % group_size == 0, "value group size ", group_size,
              " must divide head_dim ", dim);
  const Grid grid =
      QuantizeAlong(x.contiguous().view({tokens, dim / group_size, group_size}), 2, bits, meta_dtype);
  return {grid.codes.to(at::kByte).view({tokens, dim}), grid.scale.squeeze(2), grid.min.squeeze(2)};
}

at::Tensor DequantizeValues(const QuantizedTensor& q, int64_t group_size, at::ScalarType dtype) {
  TORCH_CHECK(q.codes.dim() == 2 && q.codes.size(1) % group_size == 0,
              "value codes must be [N, d] with d a multiple of ", group_size);
  const int64_t tokens = q.codes.size(0), dim = q.codes.size(1), groups = dim / group_size;
  TORCH_CHECK(q.scale.sizes() == at::IntArrayRef({tokens, groups}) && q.min.sizes() == q.scale.sizes(),
              "value scale/min must be [", tokens, ", ", groups, "]");
  const at::Tensor codes = q.codes.to(dtype).view({tokens, groups, group_size});
  return (codes * q.scale.to(dtype).unsqueeze(2) + q.min.to(dtype).unsqueeze(2)).view({tokens, dim});
}

at::Tensor PackLastDim(const at::Tensor& codes, int bits) {
  const int64_t per_word = CodesPerWord(bits);
  TORCH_CHECK(codes.scalar_type() == at::kByte, "codes must be uint8");
  TORCH_CHECK(codes.dim() >= 1 && codes.size(-1) % per_word == 0, "last dim ",
              codes.dim() ? codes.size(-1) : 0, " must be a multiple of ", per_word);
  std::vector<int64_t> packed_sizes = codes.sizes().vec();
  packed_sizes.back() /= per_word;
  if (codes.numel() == 0) return at::empty(packed_sizes, codes.options().dtype(at::kInt));
  if (codes.device().is_cpu()) {  // no device sync for the check on GPU
    TORCH_CHECK(codes.max().item<int64_t>() < (int64_t{1} << bits), "codes do not fit in ", bits, " bits");
  }
  const auto long_opts = codes.options().dtype(at::kLong);
  const at::Tensor shifts = at::arange(per_word, long_opts) * bits;
  // Fields do not overlap, so the sum is the bitwise OR; it lies in [0, 2^32).
  at::Tensor words = at::bitwise_left_shift(codes.to(at::kLong).reshape({-1, per_word}), shifts).sum(-1);
  constexpr int64_t kTwo31 = int64_t{1} << 31, kTwo32 = int64_t{1} << 32;
  words = at::where(words >= kTwo31, words - kTwo32, words);  // same bits as int32
  return words.to(at::kInt).view(packed_sizes);
}

at::Tensor UnpackLastDim(const at::Tensor& words, int bits) {
  const int64_t per_word = CodesPerWord(bits);
  TORCH_CHECK(words.scalar_type() == at::kInt, "packed words must be int32");
  TORCH_CHECK(words.dim() >= 1, "packed words need at least one dimension");
  std::vector<int64_t> code_sizes = words.sizes().vec();
  code_sizes.back() *= per_word;
  const auto long_opts = words.options().dtype(at::kLong);
  const at::Tensor shifts = at::arange(per_word, long_opts) * bits;
  const at::Tensor unsigned_words = words.to(at::kLong).bitwise_and(int64_t{0xFFFFFFFF}).unsqueeze(-1);
  return at::bitwise_right_shift(unsigned_words, shifts)
      .bitwise_and((int64_t{1} << bits) - 1)
      .to(at::kByte)
      .reshape(code_sizes);
}

}  // namespace squat::kv
