// The symmetric eigendecomposition behind the SQuat state (StackedCompensation's EighFunction):
// on CUDA, every matrix of a stack in one batched cuSOLVER call (kernels/batched_eigen.h) rather
// than LibTorch's one call per matrix; checked before use, else at::linalg_eigh. Internal to
// kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace squat::kv {

// at::linalg_eigh's contract on a [B, n, n] stack of symmetric matrices: eigenvalues [B, n]
// ascending and eigenvectors [B, n, n] as columns. float64 CUDA stacks go through the batched
// cuSOLVER solver when it is available and its result passes a check (one host sync): every
// matrix converged, max |A V - V diag(w)| <= 1e-10 max |A| per matrix, max |V^T V - I| <=
// 1e-10, eigenvalues ascending. Anything else, or a failed check (which also turns the batched
// solver off for the process), goes to at::linalg_eigh. *used_batched, when given, says which.
std::pair<at::Tensor, at::Tensor> BatchedEigh(const at::Tensor& symmetric, bool* used_batched = nullptr);

}  // namespace squat::kv
