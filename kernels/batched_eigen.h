// Symmetric eigendecomposition of many small float64 matrices in one cuSOLVER call
// (cusolverDnXsyevBatched, in cuSOLVER since CUDA 12.6). LibTorch 2.11 decomposes a batch one
// cusolverDnXsyevd call per matrix (about 1.65 ms each at n = 128 on an H100), which is what
// makes a SQuat prompt's state slow on CUDA (docs/kv-cache.md). The library is looked up at run
// time (the copy LibTorch already loaded, else libcusolver.so.12), so that nothing links
// against it and machines without it simply report it unavailable. Plain C++ API, as
// decode_attention.h.
#pragma once

#include <cstdint>

namespace squat::kernels {

// Returned when cuSOLVER or its batched eigensolver cannot be found at run time.
constexpr int kEigenUnavailable = -1;

// a: device, `batch` symmetric n x n float64 matrices one after another (row- or column-major
// alike, being symmetric); on success each holds its eigenvectors as columns in column-major
// order, i.e. as rows when read row-major. w: device, batch x n eigenvalues, ascending. info:
// device, batch ints (nonzero: that matrix did not converge). workspace: device, at least
// BatchedSymmetricEigenWorkspace bytes (the caller allocates it, so that it comes out of the
// caller's allocator rather than memory the KV pool was sized around). Queued on `stream`.
// Both return 0, kEigenUnavailable, or another nonzero code when a cuSOLVER call failed.
int BatchedSymmetricEigenWorkspace(const double* a, const double* w, int64_t n, int64_t batch, size_t* bytes);
int BatchedSymmetricEigen(double* a, double* w, int* info, int64_t n, int64_t batch, void* workspace,
                          size_t workspace_bytes, void* stream);

}  // namespace squat::kernels
