// SQuat state of one subspace instance (spec 4.1-4.3): the compensation matrices C_i of every
// layer and KV head, float32, stored in pool pages. Built once per layer from a prompt's query
// Gram and never updated; shared_ptr owners (sequences, the manager's shared subspaces, handles
// kept for a preempted sequence) keep its pages. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"

namespace squat::kv {

struct SquatSubspace {
 public:
  // `lease` must hold SquatStatePages(shape, format, page_bytes) pages. `manager_shared`: the
  // manager keeps this one for every sequence of its (g, r, lambda) (--kv-shared-subspace).
  SquatSubspace(PageLease lease, const KvModelShape& shape, const KvFormat& format, bool manager_shared);

  bool ready(int64_t layer) const { return ready_[layer]; }
  bool all_ready() const;
  int64_t pages() const { return lease_.size(); }
  bool manager_shared() const { return manager_shared_; }
  const PagePool& pool() const { return lease_.pool(); }
  // The pages holding C_i: float32, (layer, KV head)-major from float 0 of the first page.
  const std::vector<int64_t>& page_ids() const { return lease_.pages(); }

  // OK when a sequence of `format` on a model of `shape` may quantize with this subspace.
  absl::Status CheckUsableFor(const KvModelShape& shape, const KvFormat& format) const;

  // Subspace of each KV head from its query Gram (gram [H_kv, d, d] float64 over `rows` query
  // rows per head): r_eff = min(r, rows, d) eigenpairs, C_i in float64, stored as float32.
  void Build(int64_t layer, const at::Tensor& gram, int64_t rows);
  // Build for several layers at once, gram_of(layer) giving each one's Gram: every (layer,
  // head) in one StackedCompensation call on the Grams' device (BatchedEigh on CUDA).
  void BuildLayers(const std::vector<int64_t>& layers, const std::function<at::Tensor(int64_t)>& gram_of,
                   int64_t rows);
  // C_i of every head of `layer`: [head][i], float32 [g, d - (i+1) g], copied from the pages.
  std::vector<std::vector<at::Tensor>> Load(int64_t layer) const;

  PageLease lease_;
  PagedArray floats_;
  int64_t layers_, kv_heads_, head_dim_, block_size_, subspace_dim_;
  double lambda_;
  int64_t floats_per_head_;
  bool manager_shared_;
  std::vector<bool> ready_;
};

// C_i of every KV head of `layer` read from state pages laid out as kernels/page_layout.h says
// (SquatSubspace::Load, and the reference backend's key quantization): [head][i], float32
// [g, d - (i + 1) g], fresh row-major copies.
std::vector<std::vector<at::Tensor>> LoadCompensation(const PagedArray& state, int64_t layer, int64_t kv_heads,
                                                      int64_t head_dim, int64_t block_size);

}  // namespace squat::kv
