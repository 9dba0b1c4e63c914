// Full-precision ("fp16": the model's own dtype) paged cache of one sequence: token slot n of
// every layer holds position n's k_rot and v. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"

namespace squat::kv {

class Fp16SequenceCache final : public SequenceKvCache {
 public:
  Fp16SequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t reserved_tokens,
                    std::shared_ptr<PagePool> pool, PageLease pages);

  int64_t length() const override { return length_; }
  const KvFormat& format() const override { return format_; }
  bool prompt_complete() const override { return prompt_complete_; }
  absl::Status Reserve(int64_t total_tokens) override;
  int64_t reserved_tokens() const override { return reserved_; }
  int64_t pages() const override { return pages_.size(); }
  std::shared_ptr<const SquatSubspace> subspace() const override { return nullptr; }

  // One row is a decode step (paged decode attention); several are a chunk attended in full
  // precision over the slots, before or after the prompt ends.
  void Plan(int64_t num_tokens, bool prompt_complete, StepPlanner& planner, SequenceStep& step) const override;
  void AddPromptQueries(int64_t, const at::Tensor&) override {}
  void PrepareTasks(const SequenceStep&) override {}
  void Commit(const SequenceStep& step) override;

 private:
  KvModelShape shape_;
  KvFormat format_;
  int64_t reserved_;
  std::shared_ptr<PagePool> pool_;
  PageLease pages_;
  int64_t length_ = 0;
  bool prompt_complete_ = false;
};

}  // namespace squat::kv
