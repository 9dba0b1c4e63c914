// The one attention door of the model: per layer, one call for every row of the step (prefill
// chunks and decode rows). Two implementations behind this interface, chosen for the pool at
// start: the CUDA kernels (kernels/), and a reference in ATen that runs on any device and
// batches decode rows across sequences. Both read the step's plan (kvcache/step_batch.h); the
// sequence caches own the pages and the window state machine. Internal to kvcache/ and
// runtime/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <memory>

#include "kvcache/kv_cache.h"

namespace squat::kv {

class StepBatch;

class AttentionBackend {
 public:
  // The CUDA kernels when the pool is on a CUDA device, they are compiled in and support the
  // shape; otherwise the ATen reference.
  static std::unique_ptr<AttentionBackend> Create(const KvModelShape& shape, std::shared_ptr<const PagePool> pool);
  // The ATen reference whatever the device (tests and benchmarks compare the two).
  static std::unique_ptr<AttentionBackend> CreateReference(const KvModelShape& shape,
                                                           std::shared_ptr<const PagePool> pool);
  virtual ~AttentionBackend() = default;
  virtual const char* name() const = 0;  // "cuda" or "reference"

  // Once per step, after StepBatch::Seal and before the layers.
  virtual void BeginStep(const StepBatch& batch) = 0;
  // Layer `layer` of every row: q_rot [rows, H_q, d] (RoPE applied), k_pre / k_rot / v
  // [rows, H_kv, d] (keys before / after RoPE), all in the compute dtype with contiguous heads.
  // Stores each row's key (pre-RoPE for squat) and value in its sequence's pages and writes the
  // attention outputs into out [rows, H_q, d]. Prefill rows attend in full precision over their
  // prompt so far; decode rows over their pages (dequantized, RoPE applied for squat).
  virtual void Attend(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
                      const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) = 0;
  // After the last layer: the step's quantization work (key windows that reached R, values that
  // slid out of their window, completed prompts), for every layer.
  virtual void RunTasks(const StepBatch& batch) = 0;
};

}  // namespace squat::kv
