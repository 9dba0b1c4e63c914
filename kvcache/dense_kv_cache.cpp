#include "kvcache/dense_kv_cache.h"

#include <c10/util/Exception.h>

namespace squat {

DenseKvCache::DenseKvCache(int64_t num_layers, int64_t num_kv_heads, int64_t max_tokens,
                           int64_t head_dim, at::ScalarType dtype, at::Device device)
    : max_tokens_(max_tokens) {
  auto options = at::TensorOptions().dtype(dtype).device(device);
  keys_.reserve(num_layers);
  values_.reserve(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    keys_.push_back(at::empty({num_kv_heads, max_tokens, head_dim}, options));
    values_.push_back(at::empty({num_kv_heads, max_tokens, head_dim}, options));
  }
}

void DenseKvCache::write(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.size(1);
  TORCH_CHECK(length_ + t <= max_tokens_, "KV cache overflow: ", length_ + t, " > ", max_tokens_);
  keys_[layer].narrow(1, length_, t).copy_(k);
  values_[layer].narrow(1, length_, t).copy_(v);
}

void DenseKvCache::commit(int64_t num_tokens) { length_ += num_tokens; }

at::Tensor DenseKvCache::keys(int64_t layer, int64_t num_tokens) const {
  return keys_[layer].narrow(1, 0, num_tokens);
}

at::Tensor DenseKvCache::values(int64_t layer, int64_t num_tokens) const {
  return values_[layer].narrow(1, 0, num_tokens);
}

int64_t DenseKvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : keys_) total += t.numel() * t.element_size();
  for (const auto& t : values_) total += t.numel() * t.element_size();
  return total;
}

}  // namespace squat
