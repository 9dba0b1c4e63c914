#include "kvcache/fp16_sequence_cache.h"

#include <c10/util/Exception.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kvcache/attend_inputs.h"
#include "kvcache/dense_attention.h"
#include "kvcache/page_geometry.h"

namespace squat::kv {

Fp16SequenceCache::Fp16SequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t reserved_tokens,
                                     std::shared_ptr<PagePool> pool, PageLease pages)
    : shape_(shape), format_(format), reserved_(reserved_tokens), pool_(std::move(pool)),
      tokens_per_page_(TokensPerPage(shape, format, pool_->page_bytes())), pages_(std::move(pages)),
      slots_(pages_, shape, tokens_per_page_), stored_(shape.num_layers, 0) {
  TORCH_CHECK(slots_.capacity() >= reserved_, "fp16 lease too small");
}

at::Tensor Fp16SequenceCache::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                                     const at::Tensor& k_rot, const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < shape_.num_layers, "Attend: layer ", layer, " out of range");
  const int64_t tokens = CheckAttendInputs(shape_, /*needs_k_pre=*/false, q_rot, k_pre, k_rot, v);
  const int64_t start = length_;
  TORCH_CHECK(stored_[layer] == start, "Attend: layer ", layer, " attended twice before Commit");
  TORCH_CHECK(start + tokens <= reserved_, "Attend: ", start + tokens, " tokens exceed the sequence's reserved ",
              reserved_);
  slots_.Write(layer, KvPart::kKeys, start, k_rot);
  slots_.Write(layer, KvPart::kValues, start, v);
  stored_[layer] = start + tokens;
  return CausalAttention(q_rot, slots_.Read(layer, KvPart::kKeys, 0, start + tokens),
                         slots_.Read(layer, KvPart::kValues, 0, start + tokens), start);
}

bool Fp16SequenceCache::PlanBatchedDecode(DecodePlan* plan) const {
  if (!shape_.device.is_cuda() || length_ + 1 > reserved_) return false;
  for (int64_t stored : stored_) {
    if (stored != length_) return false;
  }
  plan->pool = pool_.get();
  plan->shape = shape_;
  plan->format = format_;
  plan->slots_per_page = tokens_per_page_;
  plan->data_pages = pages_.pages();
  plan->tokens = length_ + 1;
  plan->key_slot = length_;
  return true;
}

void Fp16SequenceCache::CompleteBatchedDecode() {
  for (int64_t& stored : stored_) stored = length_ + 1;
}

void Fp16SequenceCache::Commit(int64_t num_tokens, bool prompt_complete) {
  TORCH_CHECK(num_tokens > 0, "Commit: num_tokens must be > 0, got ", num_tokens);
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    TORCH_CHECK(stored_[layer] == length_ + num_tokens, "Commit(", num_tokens, "): layer ", layer, " holds ",
                stored_[layer], " tokens, expected ", length_ + num_tokens);
  }
  TORCH_CHECK(prompt_complete || !prompt_complete_, "Commit: a prompt chunk after the prompt ended");
  length_ += num_tokens;
  prompt_complete_ = prompt_complete_ || prompt_complete;
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
  slots_ = Fp16SlotStore(pages_, shape_, tokens_per_page_);
  reserved_ = total_tokens;
  return absl::OkStatus();
}

}  // namespace squat::kv
