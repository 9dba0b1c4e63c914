// The query Gram matrices of a prompt that arrives in chunks (spec 4.1 and pitfall 14): per
// layer and KV head, M^T M over the stacked q_rot rows of its query group, in float64. The sum
// runs over fixed blocks of kGramBlockTokens positions, each block's Gram formed by one
// same-shaped product and added in position order, so that the result is bit-identical however
// the prompt was cut into chunks; queries of an unfinished block wait in pool pages.
// Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"

namespace squat::kv {

class QueryGramAccumulator {
 public:
  QueryGramAccumulator() = default;
  // gram_pages: QueryGramPages(...); pending_pages: PendingQueryPages(...).
  QueryGramAccumulator(PageLease gram_pages, PageLease pending_pages, const KvModelShape& shape);

  bool active() const { return gram_lease_.size() > 0; }
  int64_t pages() const { return gram_lease_.size() + pending_lease_.size(); }
  int64_t tokens(int64_t layer) const { return tokens_[layer]; }

  // Adds the rows of q_rot [H_q, T, d] (the next T prompt positions of `layer`).
  void Add(int64_t layer, const at::Tensor& q_rot);
  // Gram [H_kv, d, d] float64 of every position added to `layer` (the unfinished block included).
  at::Tensor Total(int64_t layer) const;
  // Returns the pages to the pool.
  void Release();

 private:
  // Gram of each KV head's query rows of `queries` [H_q, n, d]: [H_kv, d, d] float64.
  at::Tensor BlockGram(const at::Tensor& queries) const;
  int64_t GramOffset(int64_t layer) const;
  int64_t PendingOffset(int64_t layer, int64_t token) const;
  at::Tensor ReadPending(int64_t layer, int64_t count) const;  // [H_q, count, d]

  PageLease gram_lease_, pending_lease_;
  PagedArray gram_, pending_;  // per layer [H_kv, d, d] float64; per layer [B, H_q, d]
  int64_t kv_heads_ = 0, heads_ = 0, head_dim_ = 0;
  std::vector<int64_t> tokens_;  // positions added per layer
};

}  // namespace squat::kv
