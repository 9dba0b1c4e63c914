// One decode step of many sequences through the fused CUDA kernels (kernels/): per layer one
// launch appends every sequence's new key/value and computes its attention over its pages;
// after the last layer one launch flushes the key windows that filled up and one slides the
// value windows, for every sequence and layer at once. Page tables and window counts are
// uploaded once per step and shared by all layers. Same formats and results (within fp16
// round-off) as SequenceKvCache::Attend, which stays the path for CPU, prompts and anything
// this one declines. Internal to kvcache/ and runtime/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/kv_cache.h"

namespace squat::kv {

class PagePool;

// What one sequence contributes to a batched decode step (host side).
struct DecodePlan {
  const PagePool* pool = nullptr;
  KvModelShape shape;
  KvFormat format;
  int64_t tokens_per_page = 0;  // quantized tokens per page (quantized formats)
  int64_t slots_per_page = 0;   // full-precision slots per page
  std::vector<int64_t> data_pages, residual_pages, state_pages;
  int64_t tokens = 0;            // N after this step's token
  int64_t quantized_keys = 0;    // N_q
  int64_t quantized_values = 0;  // N_v
  int64_t key_slot = 0;          // where the new key goes
  bool flush_keys = false;       // residual keys reach R with this token
  bool slide_value = false;      // the value window exceeds R with this token
};

// Implemented by the sequence caches that the batched path can drive.
class BatchDecodable {
 public:
  virtual ~BatchDecodable() = default;
  // False when this step cannot go through the batched path (prompt incomplete, a layer
  // already attended, reservation exhausted, not on a CUDA device).
  virtual bool PlanBatchedDecode(DecodePlan* plan) const = 0;
  // Window bookkeeping once the kernels of the step (attention, flush, slide) are queued:
  // afterwards Commit(1) completes the step exactly as after per-layer Attend calls.
  virtual void CompleteBatchedDecode() = 0;
};

class DecodeBatch {
 public:
  struct Entry {
    SequenceKvCache* cache = nullptr;
    int64_t row = 0;  // the sequence's row in the forward batch
  };

  // True when the fused kernels are compiled in and this cache can decode through them now.
  static bool Supports(const SequenceKvCache& cache);
  // Plans the step for the entries that Supports() and uploads their tables; accepted[i] tells
  // which (the caller runs SequenceKvCache::Attend for the others). Null when none is accepted
  // or the entries span several pools. One DecodeBatch per step, on the stream LibTorch uses
  // (the default stream).
  static std::unique_ptr<DecodeBatch> Create(const std::vector<Entry>& entries, std::vector<bool>* accepted);
  ~DecodeBatch();

  // q_rot [rows, H_q, d], k_pre / k_rot / v [rows, H_kv, d] (all rows of the forward batch;
  // channels contiguous, heads d apart): appends this layer's new key/value of every entry and
  // writes their attention outputs into out [rows, H_q, d] (other rows untouched).
  void Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre, const at::Tensor& k_rot,
              const at::Tensor& v, const at::Tensor& out);
  // After every layer attended: key flushes and value slides of the step, then each cache's
  // bookkeeping, so that Commit(1) follows.
  void Finish();

 private:
  struct Group;
  DecodeBatch() = default;
  std::vector<Group> groups_;
  std::vector<BatchDecodable*> caches_;
  at::Tensor tables_;  // device int32: page ids, then each group's sequences and jobs
  at::Tensor workspace_;  // device float32 split-KV partials (undefined when no group splits)
  bool finished_ = false;
};

// Quantization of one sequence's tokens by the kernels, for layers [first_layer, first_layer +
// layers): `key_groups` G-token key groups from slots key_source_slot.. of `source_pages`
// (full-precision slot pages, K part) into quantized tokens key_first_token.. of
// plan.data_pages (with plan.state_pages' C_i for SQuat), and `value_tokens` value tokens
// from slots value_source_slot.. (modulo value_ring when > 0; V part) into tokens
// value_first_token... On CUDA every code comes from these kernels (prompt, flush, slide,
// batched or not), so that a sequence's codes do not depend on the path that wrote them.
struct KernelQuantization {
  std::vector<int64_t> source_pages;
  int64_t first_layer = 0, layers = 0;
  int64_t key_groups = 0, key_source_slot = 0, key_first_token = 0;
  int64_t value_tokens = 0, value_source_slot = 0, value_first_token = 0, value_ring = 0;
};
// False, with nothing queued, when the kernels are absent or do not handle the layout.
bool QuantizeWithKernels(const DecodePlan& plan, const KernelQuantization& work);

}  // namespace squat::kv
