// An attention backend around the pool's own, from outside kvcache/: every layer's call goes
// through unchanged and its outputs are kept, and follower sequences (other formats' caches)
// get the same q/k/v rows as the sequence they follow, their outputs only kept. squat-eval uses
// it to prefill every format with one forward pass and to measure attention-output error in
// isolation (shadow caches fed the fp16 run's q/k/v).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/attention_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/step_batch.h"

namespace squat::eval {

class TeeBackend final : public kv::AttentionBackend {
 public:
  struct Follower {
    kv::SequenceKvCache* cache = nullptr;
    int64_t lead = 0;  // the step sequence (index in the batch) whose rows it gets
  };
  // Followers' steps use their own buffers (up to max_rows rows and max_followers sequences).
  static absl::StatusOr<std::unique_ptr<TeeBackend>> Create(kv::KvCacheManager& kv, int64_t max_rows,
                                                            int64_t max_followers);

  // From the next step on.
  void SetFollowers(std::vector<Follower> followers);
  // Off: outputs are passed on but not kept (drops what was kept).
  void SetRecording(bool record);
  // While on: sum q q^T (float64 [H_kv, d, d]) per layer over every row's post-RoPE queries,
  // each KV head from the rows of its query heads.
  void SetQueryGram(bool on);

  // The last step's outputs of `layer`: [rows, H_q, d], and follower i's [its rows, H_q, d].
  const at::Tensor& output(int64_t layer) const { return outputs_[layer]; }
  const at::Tensor& follower_output(size_t follower, int64_t layer) const {
    return follower_outputs_[follower][layer];
  }
  const std::vector<at::Tensor>& query_grams() const { return grams_; }

  const char* name() const override { return inner_.name(); }
  void BeginStep(const kv::StepBatch& batch) override;
  void Attend(int64_t layer, const kv::StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
              const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) override;
  void RunTasks(const kv::StepBatch& batch) override;

 private:
  TeeBackend(kv::KvCacheManager& kv, std::unique_ptr<kv::StepBatch> followers);
  kv::AttentionBackend& inner_;
  int64_t num_layers_, num_kv_heads_;
  std::unique_ptr<kv::StepBatch> follower_batch_;
  std::vector<Follower> followers_;
  at::Tensor follower_rows_;  // the lead rows the followers' rows are copied from
  bool record_ = true, gram_ = false;
  std::vector<at::Tensor> outputs_;
  std::vector<std::vector<at::Tensor>> follower_outputs_;
  std::vector<at::Tensor> grams_;
};

}  // namespace squat::eval
