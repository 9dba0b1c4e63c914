// SQuat state of one subspace instance (spec 4.1-4.3): the compensation matrices C_i of every
// layer and KV head, float32, stored in pool pages. Built once per layer from a prompt's
// queries and never updated. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"

namespace squat::kv {

class SquatState {
 public:
  // `lease` must hold SquatStatePages(shape, format, page_bytes) pages.
  SquatState(PageLease lease, const KvModelShape& shape, const KvFormat& format);

  bool ready(int64_t layer) const { return ready_[layer]; }
  int64_t pages() const { return lease_.size(); }

  // Subspace of KV head h from the q_rot rows of query heads h*n_rep .. h*n_rep+n_rep-1 over
  // all prompt tokens (q_rot [H_q, T, d]), r_eff = min(r, n_rep*T, d); Gram, eigenpairs and
  // C_i in float64, stored as float32.
  void Build(int64_t layer, const at::Tensor& q_rot);
  // C_i of every head of `layer`: [head][i], float32 [g, d - (i+1) g], read from the pages.
  std::vector<std::vector<at::Tensor>> Load(int64_t layer) const;

 private:
  int64_t HeadOffset(int64_t layer, int64_t head) const;

  PageLease lease_;
  PagedFloatArray floats_;
  int64_t kv_heads_, head_dim_, block_size_, subspace_dim_;
  double lambda_;
  int64_t floats_per_head_;
  std::vector<bool> ready_;
};

}  // namespace squat::kv
