// Full-precision ("fp16": the model's own dtype) paged cache of one sequence: token slot n of
// every layer holds position n's k_rot and v. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/batched_decode.h"
#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"

namespace squat::kv {

class Fp16SequenceCache final : public SequenceKvCache, public BatchDecodable {
 public:
  Fp16SequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t reserved_tokens,
                    std::shared_ptr<PagePool> pool, PageLease pages);

  int64_t length() const override { return length_; }
  const KvFormat& format() const override { return format_; }
  // Prompt chunks simply append. Unlike the quantized formats, any T is accepted after the
  // prompt too (several tokens appended at once).
  at::Tensor Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre, const at::Tensor& k_rot,
                    const at::Tensor& v) override;
  void Commit(int64_t num_tokens, bool prompt_complete = true) override;
  absl::Status Reserve(int64_t total_tokens) override;
  int64_t reserved_tokens() const override { return reserved_; }
  std::shared_ptr<const SquatSubspace> subspace() const override { return nullptr; }
  int64_t pages() const override { return pages_.size(); }

  // Batched CUDA decode (batched_decode.h).
  bool PlanBatchedDecode(DecodePlan* plan) const override;
  void CompleteBatchedDecode() override;

 private:
  KvModelShape shape_;
  KvFormat format_;
  int64_t reserved_;
  std::shared_ptr<PagePool> pool_;
  int64_t tokens_per_page_;
  PageLease pages_;
  Fp16SlotStore slots_;
  int64_t length_ = 0;
  bool prompt_complete_ = false;
  std::vector<int64_t> stored_;  // tokens stored per layer (length_ + T between Attend and Commit)
};

}  // namespace squat::kv
