#include "kvcache/device_eigh.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <tuple>

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/batched_eigen.h"
#endif

namespace squat::kv {
namespace {

#ifdef SQUAT_HAVE_CUDA_KERNELS
// Relative residual and orthogonality bounds: a converged float64 solver is near 1e-14; a
// wrong layout or a diverged matrix is far above.
constexpr double kTolerance = 1e-10;

std::atomic<bool> batched_disabled{false};

bool TryBatched(const at::Tensor& symmetric, at::Tensor* eigenvalues, at::Tensor* eigenvectors) {
  const int64_t batch = symmetric.size(0), n = symmetric.size(1);
  at::Tensor work = symmetric.contiguous().clone();  // overwritten with the eigenvectors
  at::Tensor w = at::empty({batch, n}, symmetric.options());
  at::Tensor info = at::zeros({batch}, symmetric.options().dtype(at::kInt));
  size_t bytes = 0;
  if (kernels::BatchedSymmetricEigenWorkspace(work.data_ptr<double>(), w.data_ptr<double>(), n, batch, &bytes) != 0) {
    return false;
  }
  // From LibTorch's caching allocator, like the other activations (the KV pool was sized
  // around them); a workspace that does not fit means the fallback.
  at::Tensor workspace;
  try {
    workspace = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, symmetric.options().dtype(at::kByte));
  } catch (const c10::Error&) {
    return false;
  }
  // nullptr: the legacy default stream, which LibTorch uses here.
  if (kernels::BatchedSymmetricEigen(work.data_ptr<double>(), w.data_ptr<double>(), info.data_ptr<int>(), n, batch,
                                     workspace.data_ptr(), bytes, nullptr) != 0) {
    return false;
  }
  // Column-major eigenvectors read row-major are the rows: transpose to columns.
  const at::Tensor v = work.transpose(1, 2);
  const at::Tensor scale = symmetric.abs().amax({1, 2});
  const at::Tensor residual = (at::matmul(symmetric, v) - v * w.unsqueeze(1)).abs().amax({1, 2});
  const at::Tensor identity = at::eye(n, symmetric.options()).unsqueeze(0);
  const at::Tensor orthogonality = (at::matmul(v.transpose(1, 2), v) - identity).abs().amax();
  at::Tensor ok = (info == 0).all() & at::isfinite(w).all() & (residual <= scale * kTolerance).all() &
                  (orthogonality <= kTolerance);
  if (n > 1) ok = ok & (w.narrow(1, 1, n - 1) >= w.narrow(1, 0, n - 1)).all();
  if (!ok.item<bool>()) return false;
  *eigenvalues = w;
  *eigenvectors = v;
  return true;
}
#endif

}  // namespace

std::pair<at::Tensor, at::Tensor> BatchedEigh(const at::Tensor& symmetric, bool* used_batched) {
  if (used_batched != nullptr) *used_batched = false;
#ifdef SQUAT_HAVE_CUDA_KERNELS
  if (symmetric.is_cuda() && symmetric.scalar_type() == at::kDouble && symmetric.dim() == 3 &&
      symmetric.size(1) == symmetric.size(2) && symmetric.size(0) > 1 && !batched_disabled.load()) {
    at::Tensor w, v;
    if (TryBatched(symmetric, &w, &v)) {
      if (used_batched != nullptr) *used_batched = true;
      return {w, v};
    }
    batched_disabled = true;  // unavailable or wrong here: do not pay for it again
  }
#endif
  auto [w, v] = at::linalg_eigh(symmetric);
  return {w, v};
}

}  // namespace squat::kv
