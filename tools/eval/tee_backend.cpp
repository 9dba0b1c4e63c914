#include "tools/eval/tee_backend.h"

#include <utility>

namespace squat::eval {

absl::StatusOr<std::unique_ptr<TeeBackend>> TeeBackend::Create(kv::KvCacheManager& kv, int64_t max_rows,
                                                               int64_t max_followers) {
  kv::StepCapacity capacity;
  capacity.max_rows = max_rows * max_followers;
  capacity.max_sequences = max_followers;
  capacity.max_page_ids = kv.StepPageIds(max_followers);
  auto batch = kv::StepBatch::Create(kv, capacity);
  if (!batch.ok()) return batch.status();
  return std::unique_ptr<TeeBackend>(new TeeBackend(kv, *std::move(batch)));
}

TeeBackend::TeeBackend(kv::KvCacheManager& kv, std::unique_ptr<kv::StepBatch> followers)
    : inner_(kv.backend()), num_layers_(kv.shape().num_layers), num_kv_heads_(kv.shape().num_kv_heads),
      follower_batch_(std::move(followers)), outputs_(num_layers_) {}

void TeeBackend::SetFollowers(std::vector<Follower> followers) {
  followers_ = std::move(followers);
  follower_outputs_.assign(followers_.size(), std::vector<at::Tensor>(num_layers_));
}

void TeeBackend::SetRecording(bool record) {
  record_ = record;
  if (record) return;
  for (at::Tensor& t : outputs_) t = at::Tensor();
  for (auto& per_follower : follower_outputs_) {
    for (at::Tensor& t : per_follower) t = at::Tensor();
  }
}

void TeeBackend::SetQueryGram(bool on) {
  gram_ = on;
  if (on) grams_.assign(num_layers_, at::Tensor());
}

void TeeBackend::BeginStep(const kv::StepBatch& batch) {
  inner_.BeginStep(batch);
  if (followers_.empty()) return;
  kv::StepBatch& f = *follower_batch_;
  f.Begin();
  std::vector<int64_t> rows;
  for (const Follower& follower : followers_) {
    const kv::SequenceStep& lead = batch.sequences()[follower.lead];
    const std::vector<int32_t> tokens(lead.num_rows, 0);  // the backend never reads token ids
    f.Add(follower.cache, tokens.data(), lead.num_rows, lead.prompt_complete, /*logits=*/false);
    for (int64_t r = 0; r < lead.num_rows; ++r) rows.push_back(lead.row_begin + r);
  }
  f.Seal();
  inner_.BeginStep(f);
  follower_rows_ = at::tensor(rows, at::kLong).to(batch.tokens().device());
}

void TeeBackend::Attend(int64_t layer, const kv::StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
                        const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) {
  if (gram_) {
    // [rows, H_q, d] -> per KV head, the rows of its query heads (contiguous groups).
    const int64_t d = q_rot.size(2);
    const at::Tensor rows = q_rot.to(at::kDouble).transpose(0, 1).reshape({num_kv_heads_, -1, d});
    const at::Tensor gram = at::matmul(rows.transpose(1, 2), rows);
    grams_[layer] = grams_[layer].defined() ? grams_[layer] + gram : gram;
  }
  inner_.Attend(layer, batch, q_rot, k_pre, k_rot, v, out);
  if (record_) outputs_[layer] = out;
  if (followers_.empty()) return;
  auto pick = [&](const at::Tensor& t) { return t.index_select(0, follower_rows_); };
  const at::Tensor follower_out = at::empty({follower_rows_.size(0), q_rot.size(1), q_rot.size(2)}, q_rot.options());
  inner_.Attend(layer, *follower_batch_, pick(q_rot), pick(k_pre), pick(k_rot), pick(v), follower_out);
  if (!record_) return;
  int64_t at = 0;
  for (size_t i = 0; i < followers_.size(); ++i) {
    const int64_t n = batch.sequences()[followers_[i].lead].num_rows;
    follower_outputs_[i][layer] = follower_out.narrow(0, at, n);
    at += n;
  }
}

void TeeBackend::RunTasks(const kv::StepBatch& batch) {
  inner_.RunTasks(batch);
  if (!followers_.empty()) follower_batch_->Finish(inner_);
}

}  // namespace squat::eval
