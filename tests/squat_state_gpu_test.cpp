// Where the time of a SQuat prompt's state goes on CUDA. The state of one prompt at the
// Llama-2-7B shape (32 layers x 32 KV heads, d 128, g 64, r 60, lambda 1e-3, 160 query rows
// per head) is built (a) per layer on the device (StackedCompensation, cuSOLVER; the path
// before the cache batched the layers), (b) in one StackedCompensation over every layer on the
// device with LibTorch's eigh, (e) the same with BatchedEigh (one cusolverDnXsyevBatched call,
// the cache's path), (c) on the CPU through ParallelStackedCompensation (OpenMP
// threads) after one copy of the Grams to pinned host memory, (d) on the CPU by plain
// std::thread workers with ATen and LAPACK set to one thread each (no nested OpenMP or MKL
// threading). Timings are printed, not asserted; the checks are that (b) to (e) equal (a)
// within float64 round-off, and that kernels::BatchedSymmetricEigen, where available, gives
// LibTorch's eigenvalues. Label gpu: skipped without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <iostream>
#include <thread>
#include <vector>

#include "kvcache/device_eigh.h"
#include "kvcache/squat_math.h"

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/batched_eigen.h"
#endif

namespace squat::kv {
namespace {

constexpr int64_t kLayers = 32, kHeads = 32, kDim = 128, kRows = 160, kRank = 60, kBlock = 64;
constexpr double kLambda = 1e-3;

// Milliseconds of fn() until its device work is done (`done` reads a result back).
double Millis(const std::function<at::Tensor()>& fn, int reps = 1) {
  const auto start = std::chrono::steady_clock::now();
  at::Tensor last;
  for (int i = 0; i < reps; ++i) last = fn();
  if (last.defined() && last.numel() > 0) (void)last.abs().sum().item<double>();  // waits for the stream
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / reps;
}

double RelativeDifference(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return (x - y).abs().max().item<double>() / std::max(1e-300, y.abs().max().item<double>());
}

TEST(SquatStateGpuTest, StageTimingsAndAgreementLlama2Shape) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const auto cuda = at::TensorOptions().dtype(at::kDouble).device(at::kCUDA);
  // Query rows with a few dominant directions plus noise, as a trained model's.
  const at::Tensor mix = at::randn({kLayers * kHeads, 8, kDim}, cuda) * 3.0;
  const at::Tensor queries =
      at::matmul(at::randn({kLayers * kHeads, kRows, 8}, cuda), mix) + 0.3 * at::randn({kLayers * kHeads, kRows, kDim}, cuda);
  const at::Tensor grams = at::matmul(queries.transpose(1, 2), queries).view({kLayers, kHeads, kDim, kDim});
  (void)grams.sum().item<double>();
  std::cout << "CPU threads: " << at::get_num_threads() << "\n";

  // Warm-up (cuSOLVER handles, workspaces, the pinned host allocator).
  (void)Millis([&] { return StackedCompensation(grams[0], kRank, kRows, kLambda, kBlock); });

  // Stages of the former per-layer device path, one layer.
  const at::Tensor layer0 = grams[0];
  const double eigh_ms = Millis([&] { return std::get<1>(at::linalg_eigh(layer0)); }, 3);
  const at::Tensor spd = at::eye(kDim, cuda).unsqueeze(0) + layer0 / layer0.abs().max();
  const double cholesky_ms = Millis([&] { return at::linalg_cholesky(spd); }, 3);
  const at::Tensor upper = at::linalg_cholesky(spd).transpose(1, 2).contiguous();
  const double solve_ms = Millis(
      [&] {
        return at::linalg_solve_triangular(upper.narrow(1, 0, kBlock).narrow(2, 0, kBlock),
                                           upper.narrow(1, 0, kBlock).narrow(2, kBlock, kDim - kBlock), true);
      },
      3);
  std::cout << "device stages, one layer of " << kHeads << " heads: eigh " << eigh_ms << " ms, cholesky "
            << cholesky_ms << " ms, solve_triangular " << solve_ms << " ms\n";

  // (a) the former path, on a few layers (it takes ~50 ms per layer), extrapolated.
  constexpr int64_t kSampled = 4;
  std::vector<at::Tensor> former(kSampled);
  const double former_ms = Millis([&] {
    for (int64_t l = 0; l < kSampled; ++l) {
      former[l] = StackedCompensation(grams[l], kRank, kRows, kLambda, kBlock).to(at::kFloat);
    }
    return former.back();
  });
  std::cout << "(a) per-layer device path: " << former_ms / kSampled << " ms per layer, "
            << former_ms / kSampled * kLayers << " ms per prompt (extrapolated from " << kSampled << " layers)\n";

  // (b) every layer in one device call.
  at::Tensor batched;
  const double batched_ms = Millis([&] {
    batched = StackedCompensation(grams.view({-1, kDim, kDim}), kRank, kRows, kLambda, kBlock).to(at::kFloat);
    return batched;
  });
  std::cout << "(b) all layers in one device call: " << batched_ms << " ms per prompt\n";

#ifdef SQUAT_HAVE_CUDA_KERNELS
  // The batched cuSOLVER solver itself against LibTorch's eigenvalues.
  {
    const at::Tensor sym = grams.view({-1, kDim, kDim}).narrow(0, 0, 64).contiguous();
    at::Tensor work = sym.clone(), w = at::empty({64, kDim}, cuda);
    at::Tensor info = at::zeros({64}, cuda.dtype(at::kInt));
    size_t bytes = 0;
    int rc = kernels::BatchedSymmetricEigenWorkspace(work.data_ptr<double>(), w.data_ptr<double>(), kDim, 64, &bytes);
    at::Tensor workspace = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, cuda.dtype(at::kByte));
    if (rc == 0) {
      rc = kernels::BatchedSymmetricEigen(work.data_ptr<double>(), w.data_ptr<double>(), info.data_ptr<int>(), kDim, 64,
                                          workspace.data_ptr(), bytes, nullptr);
    }
    std::cout << "BatchedSymmetricEigen rc " << rc << ", workspace " << bytes << " bytes for 64 matrices\n";
    if (rc == 0) {
      const at::Tensor expected = std::get<0>(at::linalg_eigh(sym));
      EXPECT_EQ(info.abs().max().item<int>(), 0);
      EXPECT_LT(RelativeDifference(w, expected), 1e-10);
    }
  }
#endif
  // (e) the cache's path: all layers, BatchedEigh.
  at::Tensor batched_solver;
  bool used_batched = false;
  const EighFunction batched_eigh = [&](const at::Tensor& sym) { return BatchedEigh(sym, &used_batched); };
  (void)StackedCompensation(grams.view({-1, kDim, kDim}).narrow(0, 0, 64), kRank, kRows, kLambda, kBlock, batched_eigh);
  const double solver_ms = Millis([&] {
    batched_solver =
        StackedCompensation(grams.view({-1, kDim, kDim}), kRank, kRows, kLambda, kBlock, batched_eigh).to(at::kFloat);
    return batched_solver;
  });
  std::cout << "(e) all layers, BatchedEigh (" << (used_batched ? "cusolverDnXsyevBatched" : "fell back to LibTorch")
            << "): " << solver_ms << " ms per prompt\n";

  // (c) the cache's path: gather to pinned host memory, CPU threads, copy back.
  at::Tensor host_grams, host_state, built;
  double gather_ms = 0, math_ms = 0, upload_ms = 0;
  constexpr int kReps = 3;
  for (int rep = 0; rep < kReps; ++rep) {
    gather_ms += Millis([&] {
      host_grams = at::empty(grams.sizes(), at::TensorOptions().dtype(at::kDouble).pinned_memory(true));
      host_grams.copy_(grams);
      return at::Tensor();
    });
    math_ms += Millis([&] {
      host_state = ParallelStackedCompensation(host_grams.view({-1, kDim, kDim}), kRank, kRows, kLambda, kBlock);
      return at::Tensor();
    });
    upload_ms += Millis([&] {
      built = host_state.to(at::kFloat).to(at::kCUDA);
      return built;
    });
  }
  gather_ms /= kReps, math_ms /= kReps, upload_ms /= kReps;
  std::cout << "(c) CPU-threaded path: gather " << gather_ms << " ms + math " << math_ms << " ms + upload "
            << upload_ms << " ms = " << gather_ms + math_ms + upload_ms << " ms per prompt\n";
  const double single_ms = Millis([&] {
    return StackedCompensation(host_grams.view({-1, kDim, kDim}).narrow(0, 0, 8), kRank, kRows, kLambda, kBlock);
  });
  std::cout << "CPU, one call outside any parallel region: " << single_ms / 8 << " ms per (layer, head)\n";

  // (d) std::thread workers, ATen (and through it MKL / OpenBLAS) limited to one thread.
  const int saved_threads = at::get_num_threads();
  const int workers = std::max(1, saved_threads);
  at::set_num_threads(1);
  at::Tensor worker_state = at::empty_like(host_state);
  const at::Tensor flat_grams = host_grams.view({-1, kDim, kDim});
  auto run_workers = [&](int n_workers, int64_t total) {
    std::vector<std::thread> threads;
    std::atomic<bool> failed{false};
    const int64_t per = (total + n_workers - 1) / n_workers;
    for (int w = 0; w < n_workers; ++w) {
      threads.emplace_back([&, w] {
        const int64_t begin = w * per, end = std::min(total, begin + per);
        if (begin >= end) return;
        try {
          worker_state.narrow(0, begin, end - begin)
              .copy_(StackedCompensation(flat_grams.narrow(0, begin, end - begin), kRank, kRows, kLambda, kBlock));
        } catch (const std::exception&) {
          failed = true;
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_FALSE(failed.load());
    return at::Tensor();
  };
  const double one_worker_ms = Millis([&] { return run_workers(1, 64); });
  const double workers_ms = Millis([&] { return run_workers(workers, kLayers * kHeads); });
  at::set_num_threads(saved_threads);
  std::cout << "(d) std::thread workers, one ATen thread each: " << one_worker_ms / 64 << " ms per (layer, head) on one, "
            << workers_ms << " ms per prompt on " << workers << "\n";

  for (int64_t l = 0; l < kSampled; ++l) {
    const at::Tensor reference = former[l].to(at::kDouble);
    EXPECT_LT(RelativeDifference(worker_state.view({kLayers, kHeads, -1})[l].to(at::kFloat), reference), 1e-5)
        << "layer " << l;
    EXPECT_LT(RelativeDifference(built.view({kLayers, kHeads, -1})[l], reference), 1e-5) << "layer " << l;
    EXPECT_LT(RelativeDifference(batched.view({kLayers, kHeads, -1})[l], reference), 1e-5) << "layer " << l;
    EXPECT_LT(RelativeDifference(batched_solver.view({kLayers, kHeads, -1})[l], reference), 1e-5) << "layer " << l;
  }
}

}  // namespace
}  // namespace squat::kv
