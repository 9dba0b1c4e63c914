// KIVI / SQuat quantization math on ATen tensors (spec sections 4-6): query subspace,
// compensation matrices, block-wise key quantization with error feedback, per-token value
// quantization, and bit packing. Runs in the dtype it is given (float64 for the oracle tests,
// float32 in the server). Internal to kvcache/ and runtime/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace squat::kv {

// Gram matrix M^T M (float64, [d, d]) of query rows [n, d].
at::Tensor QueryGram(const at::Tensor& query_rows);

// Top-r_eff eigenpairs of a Gram matrix (symmetric eigendecomposition in float64):
// sigma2 [r_eff] descending (= squared singular values of the query rows), basis [d, r_eff].
// r_eff = min(r, d, rank bound given by the caller as max_rank).
struct QuerySubspace {
  at::Tensor sigma2;
  at::Tensor basis;
};
QuerySubspace SubspaceFromGram(const at::Tensor& gram, int64_t r, int64_t max_rank);

// The three equivalent routes of spec 4.3 (test T4); the server uses kCholesky.
enum class CompensationMethod { kCholesky, kSchurRecursion, kWoodbury };

// C_i for i = 0 .. T-2 (T = d / block_size), C_i of shape [block_size, d - (i+1) block_size],
// float64. lambda = 0 gives all-zero matrices (KIVI).
std::vector<at::Tensor> CompensationMatrices(const QuerySubspace& subspace, double lambda,
                                             int64_t head_dim, int64_t block_size,
                                             CompensationMethod method = CompensationMethod::kCholesky);

// A symmetric eigendecomposition with at::linalg_eigh's contract on [B, n, n]: eigenvalues
// [B, n] ascending, eigenvectors [B, n, n] as columns.
using EighFunction = std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&)>;

// SubspaceFromGram + CompensationMatrices (Cholesky route) for a stack of heads at once, so
// that a layer costs a handful of batched ops rather than a dozen per head (on CUDA: one
// batched eigendecomposition instead of one per head). grams [H, d, d]; returns [H, F] float64,
// each head's C_0, C_1, ... flattened in order (F = sum_i g (d - (i+1) g)). Equal to the
// per-head functions up to round-off. `eigh` replaces at::linalg_eigh when given (the cache
// passes the batched cuSOLVER route of device_eigh.h).
at::Tensor StackedCompensation(const at::Tensor& grams, int64_t r, int64_t max_rank, double lambda,
                               int64_t block_size, const EighFunction& eigh = nullptr);

// StackedCompensation of many Gram matrices (grams [M, d, d], float64, on the CPU), shared out
// over ATen's intra-op threads: each thread runs StackedCompensation on a slice of matrices
// (LAPACK per matrix, so every row equals StackedCompensation of that matrix alone up to BLAS
// round-off). Returns [M, F] float64 on the CPU. Not used by the cache: on the H100 machine it
// took as long as cuSOLVER for a 7B prompt's 1024 heads (tests/squat_state_gpu_test.cpp and
// docs/kv-cache.md give the numbers); kept for that comparison.
at::Tensor ParallelStackedCompensation(const at::Tensor& grams, int64_t r, int64_t max_rank, double lambda,
                                       int64_t block_size);

// Metric P = I + lambda * basis diag(sigma2) basis^T (float64, [d, d]) for tests and diagnostics.
at::Tensor SquatMetric(const QuerySubspace& subspace, double lambda, int64_t head_dim);

// Codes (uint8, one per element) with per-group scale and minimum.
struct QuantizedTensor {
  at::Tensor codes;  // uint8
  at::Tensor scale;  // meta dtype
  at::Tensor min;    // meta dtype
};

// Keys x [N, d] (N a multiple of group_size): per channel over groups of group_size tokens,
// channel blocks of block_size quantized in order, each block's rounding error fed forward
// through `compensation` (empty vector or lambda = 0: plain KIVI). codes [N, d],
// scale/min [N / group_size, d]. Arithmetic in x's dtype; scale and min are rounded to
// meta_dtype before the codes and the dequantized values are formed, so that the error fed
// forward is the error of what is stored (kHalf in the server, x's dtype in oracle tests).
// A zero-range group gets code 0 and dequantizes to its minimum.
QuantizedTensor QuantizeKeys(const at::Tensor& x, int bits, int64_t group_size, int64_t block_size,
                             const std::vector<at::Tensor>& compensation, at::ScalarType meta_dtype);
// [N, d] in `dtype`.
at::Tensor DequantizeKeys(const QuantizedTensor& q, int64_t group_size, at::ScalarType dtype);

// Values x [N, d]: per token over groups of group_size channels. codes [N, d],
// scale/min [N, d / group_size].
QuantizedTensor QuantizeValues(const at::Tensor& x, int bits, int64_t group_size, at::ScalarType meta_dtype);
at::Tensor DequantizeValues(const QuantizedTensor& q, int64_t group_size, at::ScalarType dtype);

// Bit packing (spec 6): codes uint8 [..., n] -> int32 words [..., n / (32 / bits)], element i
// in bits [bits * (i mod fpi), ...) of word i / fpi, least significant first. n must be a
// multiple of 32 / bits.
at::Tensor PackLastDim(const at::Tensor& codes, int bits);
at::Tensor UnpackLastDim(const at::Tensor& words, int bits);

}  // namespace squat::kv
