#include "kvcache/fp16_sequence_cache.h"

#include <c10/util/Exception.h>

#include <utility>

#include "kvcache/attend_inputs.h"
#include "kvcache/dense_attention.h"

namespace squat::kv {

Fp16SequenceCache::Fp16SequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t max_tokens,
                                     int64_t tokens_per_page, PageLease pages)
    : shape_(shape), format_(format), max_tokens_(max_tokens), pages_(std::move(pages)),
      slots_(pages_, shape, tokens_per_page), stored_(shape.num_layers, 0) {}

at::Tensor Fp16SequenceCache::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                                     const at::Tensor& k_rot, const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < shape_.num_layers, "Attend: layer ", layer, " out of range");
  const int64_t tokens = CheckAttendInputs(shape_, /*needs_k_pre=*/false, q_rot, k_pre, k_rot, v);
  const int64_t start = length_;
  TORCH_CHECK(stored_[layer] == start, "Attend: layer ", layer, " attended twice before Commit");
  TORCH_CHECK(start + tokens <= max_tokens_, "Attend: ", start + tokens, " tokens exceed the sequence's reserved ",
              max_tokens_);
  slots_.Write(layer, KvPart::kKeys, start, k_rot);
  slots_.Write(layer, KvPart::kValues, start, v);
  stored_[layer] = start + tokens;
  return CausalAttention(q_rot, slots_.Read(layer, KvPart::kKeys, 0, start + tokens),
                         slots_.Read(layer, KvPart::kValues, 0, start + tokens), start);
}

void Fp16SequenceCache::Commit(int64_t num_tokens) {
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    TORCH_CHECK(stored_[layer] == length_ + num_tokens, "Commit(", num_tokens, "): layer ", layer, " holds ",
                stored_[layer], " tokens, expected ", length_ + num_tokens);
  }
  length_ += num_tokens;
}

}  // namespace squat::kv
