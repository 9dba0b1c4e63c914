// A SequenceKvCache that wraps another from outside kvcache/: it hands the model's q/k/v to a
// primary cache (whose attention output the model gets) and to follower caches (whose outputs
// are only kept), records every layer's latest outputs, and can accumulate the prompt's query
// Gram. squat-eval uses it to measure attention-output error and to prefill several formats
// with one forward pass.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/kv_cache.h"

namespace squat::eval {

class TeeCache final : public kv::SequenceKvCache {
 public:
  TeeCache(kv::SequenceKvCache* primary, int64_t num_layers);

  // Followers get every Attend/Commit/Reserve from now on.
  void SetFollowers(std::vector<kv::SequenceKvCache*> followers);
  // Off: outputs are passed on but not kept (a prefill's outputs of every layer and follower
  // would otherwise stay alive together). Turning it off drops what was kept.
  void SetRecording(bool record);
  // Accumulates, until the prompt completes, sum q q^T (float64 [H_kv, d, d]) per layer over
  // the prompt's post-RoPE queries, each KV head from the rows of its query heads.
  void EnableQueryGram(int64_t num_kv_heads);

  // The latest Attend outputs of layer `layer`: the primary's and follower i's ([H_q, T, d]).
  const at::Tensor& output(int64_t layer) const { return outputs_[layer]; }
  const at::Tensor& follower_output(size_t follower, int64_t layer) const {
    return follower_outputs_[follower][layer];
  }
  const std::vector<at::Tensor>& query_grams() const { return grams_; }

  int64_t length() const override { return primary_->length(); }
  const kv::KvFormat& format() const override { return primary_->format(); }
  at::Tensor Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre, const at::Tensor& k_rot,
                    const at::Tensor& v) override;
  void Commit(int64_t num_tokens, bool prompt_complete = true) override;
  absl::Status Reserve(int64_t total_tokens) override;
  int64_t reserved_tokens() const override { return primary_->reserved_tokens(); }
  std::shared_ptr<const kv::SquatSubspace> subspace() const override { return primary_->subspace(); }
  int64_t pages() const override { return primary_->pages(); }

 private:
  kv::SequenceKvCache* primary_;
  std::vector<kv::SequenceKvCache*> followers_;
  std::vector<at::Tensor> outputs_;
  std::vector<std::vector<at::Tensor>> follower_outputs_;
  bool record_ = true;
  int64_t num_kv_heads_ = 0;  // > 0: Gram enabled
  bool prompt_complete_ = false;
  std::vector<at::Tensor> grams_;
};

}  // namespace squat::eval
