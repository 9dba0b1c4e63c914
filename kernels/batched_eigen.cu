// cusolverDnXsyevBatched through dlopen/dlsym (see batched_eigen.h). The function pointer types
// are spelled out here rather than taken from the header, so that this compiles against
// toolkits whose cusolverDn.h predates the batched solver.
#include "kernels/batched_eigen.h"

#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <dlfcn.h>

#include <cstddef>
#include <vector>

namespace squat::kernels {
namespace {

using CreateFn = cusolverStatus_t (*)(cusolverDnHandle_t*);
using SetStreamFn = cusolverStatus_t (*)(cusolverDnHandle_t, cudaStream_t);
using CreateParamsFn = cusolverStatus_t (*)(cusolverDnParams_t*);
using BufferSizeFn = cusolverStatus_t (*)(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t, cublasFillMode_t,
                                          int64_t, cudaDataType, const void*, int64_t, cudaDataType, const void*,
                                          cudaDataType, size_t*, size_t*, int64_t);
using SyevBatchedFn = cusolverStatus_t (*)(cusolverDnHandle_t, cusolverDnParams_t, cusolverEigMode_t,
                                           cublasFillMode_t, int64_t, cudaDataType, void*, int64_t, cudaDataType,
                                           void*, cudaDataType, void*, size_t, void*, size_t, int*, int64_t);

struct Cusolver {
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  CreateParamsFn create_params = nullptr;
  BufferSizeFn buffer_size = nullptr;
  SyevBatchedFn syev_batched = nullptr;
  bool ok() const { return create && set_stream && create_params && buffer_size && syev_batched; }
};

const Cusolver& Library() {
  static const Cusolver library = [] {
    Cusolver c;
    void* handle = nullptr;
    for (const char* name : {"libcusolver.so.12", "libcusolver.so"}) {
      // The copy LibTorch loaded first, so that one cuSOLVER serves both.
      handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
      if (handle == nullptr) handle = dlopen(name, RTLD_NOW);
      if (handle != nullptr) break;
    }
    if (handle == nullptr) return c;
    c.create = reinterpret_cast<CreateFn>(dlsym(handle, "cusolverDnCreate"));
    c.set_stream = reinterpret_cast<SetStreamFn>(dlsym(handle, "cusolverDnSetStream"));
    c.create_params = reinterpret_cast<CreateParamsFn>(dlsym(handle, "cusolverDnCreateParams"));
    c.buffer_size = reinterpret_cast<BufferSizeFn>(dlsym(handle, "cusolverDnXsyevBatched_bufferSize"));
    c.syev_batched = reinterpret_cast<SyevBatchedFn>(dlsym(handle, "cusolverDnXsyevBatched"));
    return c;
  }();
  return library;
}

// One handle per thread (the engine thread owns its device), kept for the thread's lifetime,
// with the host workspace that cuSOLVER may ask for.
struct ThreadSolver {
  cusolverDnHandle_t handle = nullptr;
  cusolverDnParams_t params = nullptr;
  std::vector<char> host_buffer;
};

// This thread's solver on `stream`, or nullptr when cuSOLVER is unavailable.
ThreadSolver* SolverOn(const Cusolver& lib, void* stream) {
  if (!lib.ok()) return nullptr;
  thread_local ThreadSolver solver;
  if (solver.handle == nullptr) {
    if (lib.create(&solver.handle) != CUSOLVER_STATUS_SUCCESS) {
      solver.handle = nullptr;
      return nullptr;
    }
    if (lib.create_params(&solver.params) != CUSOLVER_STATUS_SUCCESS) return nullptr;
  }
  if (lib.set_stream(solver.handle, static_cast<cudaStream_t>(stream)) != CUSOLVER_STATUS_SUCCESS) return nullptr;
  return &solver;
}

}  // namespace

int BatchedSymmetricEigenWorkspace(const double* a, const double* w, int64_t n, int64_t batch, size_t* bytes) {
  const Cusolver& lib = Library();
  ThreadSolver* solver = SolverOn(lib, nullptr);
  if (solver == nullptr) return kEigenUnavailable;
  size_t host_bytes = 0;
  *bytes = 0;
  if (batch <= 0) return 0;
  if (lib.buffer_size(solver->handle, solver->params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F,
                      a, n, CUDA_R_64F, w, CUDA_R_64F, bytes, &host_bytes, batch) != CUSOLVER_STATUS_SUCCESS) {
    return -2;
  }
  return 0;
}

int BatchedSymmetricEigen(double* a, double* w, int* info, int64_t n, int64_t batch, void* workspace,
                          size_t workspace_bytes, void* stream) {
  const Cusolver& lib = Library();
  ThreadSolver* solver = SolverOn(lib, stream);
  if (solver == nullptr) return kEigenUnavailable;
  if (batch <= 0) return 0;
  size_t device_bytes = 0, host_bytes = 0;
  if (lib.buffer_size(solver->handle, solver->params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F,
                      a, n, CUDA_R_64F, w, CUDA_R_64F, &device_bytes, &host_bytes, batch) != CUSOLVER_STATUS_SUCCESS) {
    return -2;
  }
  if (device_bytes > workspace_bytes) return -3;
  if (host_bytes > solver->host_buffer.size()) solver->host_buffer.resize(host_bytes);
  const cusolverStatus_t status = lib.syev_batched(
      solver->handle, solver->params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n, CUDA_R_64F,
      w, CUDA_R_64F, workspace, workspace_bytes, host_bytes > 0 ? solver->host_buffer.data() : nullptr, host_bytes, info,
      batch);
  return status == CUSOLVER_STATUS_SUCCESS ? 0 : -4;
}

}  // namespace squat::kernels
