#include "kvcache/fp16_sequence_cache.h"

#include <c10/util/Exception.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kvcache/page_geometry.h"
#include "kvcache/step_batch.h"

namespace squat::kv {

Fp16SequenceCache::Fp16SequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t reserved_tokens,
                                     std::shared_ptr<PagePool> pool, PageLease pages)
    : shape_(shape), format_(format), reserved_(reserved_tokens), pool_(std::move(pool)), pages_(std::move(pages)) {
  TORCH_CHECK(pages_.size() * TokensPerPage(shape, format, pool_->page_bytes()) >= reserved_,
              "fp16 lease too small");
}

void Fp16SequenceCache::Plan(int64_t num_tokens, bool prompt_complete, StepPlanner& planner,
                             SequenceStep& step) const {
  TORCH_CHECK(num_tokens > 0, "step: num_tokens must be > 0, got ", num_tokens);
  TORCH_CHECK(length_ + num_tokens <= reserved_, "step: ", length_ + num_tokens,
              " tokens exceed the sequence's reserved ", reserved_);
  TORCH_CHECK(prompt_complete || !prompt_complete_, "step: a prompt chunk after the prompt ended");
  step.start = length_;
  if (num_tokens == 1) {
    step.decode = true;
    step.data = planner.AddPages(pages_.pages());
    step.tokens = length_ + 1;
    step.key_slot = length_;
  } else {
    step.slots = planner.AddPages(pages_.pages());
  }
}

void Fp16SequenceCache::Commit(const SequenceStep& step) {
  TORCH_CHECK(step.cache == this && step.start == length_, "Commit: not this sequence's step");
  length_ += step.num_rows;
  prompt_complete_ = prompt_complete_ || step.prompt_complete;
}

absl::Status Fp16SequenceCache::Reserve(int64_t total_tokens) {
  if (total_tokens <= reserved_) return absl::OkStatus();
  const int64_t more = PagesForSequence(shape_, format_, pool_->page_bytes(), total_tokens).data - pages_.size();
  if (pages_.size() + more > pool_->total_pages()) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: ", total_tokens, " tokens of fp16 need ",
                                                   pages_.size() + more, " pages, the pool has ",
                                                   pool_->total_pages()));
  }
  absl::StatusOr<std::vector<int64_t>> ids = pool_->Allocate(more);
  if (!ids.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: no room now to grow a sequence to ", total_tokens,
                                                     " tokens: ", ids.status().message()));
  }
  pages_.Append(PageLease(pool_, *std::move(ids)));
  reserved_ = total_tokens;
  return absl::OkStatus();
}

}  // namespace squat::kv
