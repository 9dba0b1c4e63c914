#include "kvcache/squat_state.h"

#include <c10/util/Exception.h>

#include <utility>

#include "kvcache/page_geometry.h"
#include "kvcache/squat_math.h"

namespace squat::kv {

SquatState::SquatState(PageLease lease, const KvModelShape& shape, const KvFormat& format)
    : lease_(std::move(lease)), floats_(lease_), kv_heads_(shape.num_kv_heads), head_dim_(shape.head_dim),
      block_size_(format.block_size), subspace_dim_(format.subspace_dim), lambda_(format.lambda),
      floats_per_head_(SquatStateFloatsPerHead(format, shape.head_dim)), ready_(shape.num_layers, false) {
  TORCH_CHECK(floats_.capacity() >= shape.num_layers * kv_heads_ * floats_per_head_,
              "SQuat state: lease of ", lease_.size(), " pages is too small");
}

int64_t SquatState::HeadOffset(int64_t layer, int64_t head) const {
  return (layer * kv_heads_ + head) * floats_per_head_;
}

void SquatState::Build(int64_t layer, const at::Tensor& q_rot) {
  const int64_t n_rep = q_rot.size(0) / kv_heads_, tokens = q_rot.size(1);
  for (int64_t h = 0; h < kv_heads_; ++h) {
    at::Tensor rows = q_rot.narrow(0, h * n_rep, n_rep).reshape({n_rep * tokens, head_dim_});
    const QuerySubspace subspace = SubspaceFromGram(QueryGram(rows), subspace_dim_, n_rep * tokens);
    const std::vector<at::Tensor> blocks = CompensationMatrices(subspace, lambda_, head_dim_, block_size_);
    int64_t offset = HeadOffset(layer, h);
    for (const at::Tensor& c : blocks) {
      floats_.Write(offset, c.to(at::kFloat));
      offset += c.numel();
    }
  }
  ready_[layer] = true;
}

std::vector<std::vector<at::Tensor>> SquatState::Load(int64_t layer) const {
  TORCH_CHECK(ready_[layer], "SQuat state of layer ", layer, " is used before it is built");
  std::vector<std::vector<at::Tensor>> heads(kv_heads_);
  for (int64_t h = 0; h < kv_heads_; ++h) {
    int64_t offset = HeadOffset(layer, h);
    for (int64_t done = block_size_; done < head_dim_; done += block_size_) {
      const int64_t cols = head_dim_ - done;
      heads[h].push_back(floats_.Read(offset, block_size_ * cols).view({block_size_, cols}));
      offset += block_size_ * cols;
    }
  }
  return heads;
}

}  // namespace squat::kv
