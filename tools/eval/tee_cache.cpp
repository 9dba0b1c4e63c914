#include "tools/eval/tee_cache.h"

#include <utility>

namespace squat::eval {

TeeCache::TeeCache(kv::SequenceKvCache* primary, int64_t num_layers)
    : primary_(primary), outputs_(num_layers) {}

void TeeCache::SetFollowers(std::vector<kv::SequenceKvCache*> followers) {
  followers_ = std::move(followers);
  follower_outputs_.assign(followers_.size(), std::vector<at::Tensor>(outputs_.size()));
}

void TeeCache::SetRecording(bool record) {
  record_ = record;
  if (record) return;
  for (at::Tensor& t : outputs_) t = at::Tensor();
  for (auto& per_follower : follower_outputs_) {
    for (at::Tensor& t : per_follower) t = at::Tensor();
  }
}

void TeeCache::EnableQueryGram(int64_t num_kv_heads) {
  num_kv_heads_ = num_kv_heads;
  grams_.assign(outputs_.size(), at::Tensor());
}

at::Tensor TeeCache::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                            const at::Tensor& k_rot, const at::Tensor& v) {
  if (num_kv_heads_ > 0 && !prompt_complete_) {
    // q_rot [H_q, T, d]; query head j belongs to KV head j / n_rep (contiguous groups).
    const int64_t d = q_rot.size(2);
    const at::Tensor rows = q_rot.to(at::kDouble).reshape({num_kv_heads_, -1, d});
    const at::Tensor gram = at::matmul(rows.transpose(1, 2), rows);
    grams_[layer] = grams_[layer].defined() ? grams_[layer] + gram : gram;
  }
  for (size_t i = 0; i < followers_.size(); ++i) {
    at::Tensor out = followers_[i]->Attend(layer, q_rot, k_pre, k_rot, v);
    if (record_) follower_outputs_[i][layer] = std::move(out);
  }
  at::Tensor out = primary_->Attend(layer, q_rot, k_pre, k_rot, v);
  if (record_) outputs_[layer] = out;
  return out;
}

void TeeCache::Commit(int64_t num_tokens, bool prompt_complete) {
  for (kv::SequenceKvCache* follower : followers_) follower->Commit(num_tokens, prompt_complete);
  primary_->Commit(num_tokens, prompt_complete);
  if (prompt_complete) prompt_complete_ = true;
}

absl::Status TeeCache::Reserve(int64_t total_tokens) {
  for (kv::SequenceKvCache* follower : followers_) {
    if (absl::Status s = follower->Reserve(total_tokens); !s.ok()) return s;
  }
  return primary_->Reserve(total_tokens);
}

}  // namespace squat::eval
