#include "kvcache/squat_state.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/page_layout.h"
#include "kvcache/device_eigh.h"
#include "kvcache/page_geometry.h"
#include "kvcache/squat_math.h"

namespace squat::kv {

SquatSubspace::SquatSubspace(PageLease lease, const KvModelShape& shape, const KvFormat& format,
                             bool manager_shared)
    : lease_(std::move(lease)), floats_(lease_, at::kFloat), layers_(shape.num_layers),
      kv_heads_(shape.num_kv_heads), head_dim_(shape.head_dim), block_size_(format.block_size),
      subspace_dim_(format.subspace_dim), lambda_(format.lambda),
      floats_per_head_(SquatStateFloatsPerHead(format, shape.head_dim)), manager_shared_(manager_shared),
      ready_(shape.num_layers, false) {
  TORCH_CHECK(floats_.capacity() >= layers_ * kv_heads_ * floats_per_head_, "SQuat state: lease of ",
              lease_.size(), " pages is too small");
}

bool SquatSubspace::all_ready() const {
  return std::all_of(ready_.begin(), ready_.end(), [](bool r) { return r; });
}

absl::Status SquatSubspace::CheckUsableFor(const KvModelShape& shape, const KvFormat& format) const {
  if (shape.num_layers != layers_ || shape.num_kv_heads != kv_heads_ || shape.head_dim != head_dim_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: the reused SQuat subspace is for ", layers_, " layers, ", kv_heads_, " KV heads, head_dim ",
        head_dim_, "; this model has ", shape.num_layers, ", ", shape.num_kv_heads, ", ", shape.head_dim));
  }
  if (format.block_size != block_size_ || format.subspace_dim != subspace_dim_ || format.lambda != lambda_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: the reused SQuat subspace has block_size ", block_size_, ", subspace_dim ", subspace_dim_,
        ", lambda ", lambda_, "; the format asks for ", format.block_size, ", ", format.subspace_dim, ", ",
        format.lambda));
  }
  if (!all_ready()) {
    return absl::InvalidArgumentError("KV cache: the reused SQuat subspace is not built (its prompt never completed)");
  }
  return absl::OkStatus();
}

void SquatSubspace::Build(int64_t layer, const at::Tensor& gram, int64_t rows) {
  BuildLayers({layer}, [&](int64_t) { return gram; }, rows);
}

void SquatSubspace::BuildLayers(const std::vector<int64_t>& layers,
                                const std::function<at::Tensor(int64_t)>& gram_of, int64_t rows) {
  for (int64_t layer : layers) {
    TORCH_CHECK(layer >= 0 && layer < layers_, "SQuat state: layer ", layer, " out of range");
    TORCH_CHECK(!ready_[layer], "SQuat state of layer ", layer, " is built twice");
  }
  if (layers.empty()) return;
  const int64_t count = static_cast<int64_t>(layers.size());
  std::vector<at::Tensor> grams;
  for (int64_t layer : layers) {
    grams.push_back(gram_of(layer));
    TORCH_CHECK(grams.back().dim() == 3 && grams.back().size(0) == kv_heads_ && grams.back().size(1) == head_dim_ &&
                    grams.back().size(2) == head_dim_,
                "SQuat state: Gram of layer ", layer, " must be [", kv_heads_, ", ", head_dim_, ", ", head_dim_,
                "], got ", grams.back().sizes());
  }
  // Every head of every layer in one batched call on the Grams' device; on CUDA the
  // eigendecompositions go to cuSOLVER's batched solver in one call (device_eigh.h). Heads and
  // layers are consecutive in the state layout.
  const at::Tensor stacked = StackedCompensation(at::cat(grams, 0), subspace_dim_, rows, lambda_, block_size_,
                                                 [](const at::Tensor& sym) { return BatchedEigh(sym); })
                                 .to(at::kFloat);
  TORCH_CHECK(stacked.size(0) == count * kv_heads_ && stacked.size(1) == floats_per_head_, "SQuat state: got ",
              stacked.sizes(), " for ", count * kv_heads_, " heads of ", floats_per_head_, " floats");
  if (floats_per_head_ > 0) {
    const at::Tensor values = stacked.view({count, -1});
    bool consecutive = true;
    for (int64_t i = 1; i < count; ++i) consecutive = consecutive && layers[i] == layers[i - 1] + 1;
    if (consecutive) {
      floats_.Write(kernels::SquatStateHeadOffset(layers.front(), 0, kv_heads_, floats_per_head_), values);
    } else {
      for (int64_t i = 0; i < count; ++i) {
        floats_.Write(kernels::SquatStateHeadOffset(layers[i], 0, kv_heads_, floats_per_head_), values[i]);
      }
    }
  }
  for (int64_t layer : layers) ready_[layer] = true;
}

std::vector<std::vector<at::Tensor>> SquatSubspace::Load(int64_t layer) const {
  TORCH_CHECK(ready_[layer], "SQuat state of layer ", layer, " is used before it is built");
  return LoadCompensation(floats_, layer, kv_heads_, head_dim_, block_size_);
}

std::vector<std::vector<at::Tensor>> LoadCompensation(const PagedArray& state, int64_t layer, int64_t kv_heads,
                                                      int64_t head_dim, int64_t block_size) {
  const int64_t per_head = kernels::SquatStateFloatsPerHead(head_dim, block_size);
  std::vector<std::vector<at::Tensor>> heads(kv_heads);
  for (int64_t h = 0; h < kv_heads; ++h) {
    int64_t offset = kernels::SquatStateHeadOffset(layer, h, kv_heads, per_head);
    for (int64_t done = block_size; done < head_dim; done += block_size) {
      const int64_t cols = head_dim - done;
      // A fresh row-major copy rather than a view into the page, so that the BLAS product of the
      // quantizer always sees the same operand layout whatever offset the state lies at.
      heads[h].push_back(state.Read(offset, block_size * cols).view({block_size, cols}).clone());
      offset += block_size * cols;
    }
  }
  return heads;
}

}  // namespace squat::kv
