// Contiguous full-precision KV cache of one sequence: the baseline that the paged
// quantized pool (issue 3) replaces. Internal to runtime/ and kvcache/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace squat {

class DenseKvCache {
 public:
  // One [num_kv_heads, max_tokens, head_dim] key and value tensor per layer.
  DenseKvCache(int64_t num_layers, int64_t num_kv_heads, int64_t max_tokens, int64_t head_dim,
               at::ScalarType dtype, at::Device device);

  int64_t max_tokens() const { return max_tokens_; }
  int64_t length() const { return length_; }  // tokens already stored
  // Stores k, v ([num_kv_heads, T, head_dim]) of `layer` at positions [length, length + T).
  // The new length takes effect after commit(T), once every layer has written.
  void write(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  void commit(int64_t num_tokens);
  // Views over the first `num_tokens` cached positions of a layer.
  at::Tensor keys(int64_t layer, int64_t num_tokens) const;
  at::Tensor values(int64_t layer, int64_t num_tokens) const;
  int64_t bytes() const;

 private:
  int64_t max_tokens_;
  int64_t length_ = 0;
  std::vector<at::Tensor> keys_;
  std::vector<at::Tensor> values_;
};

}  // namespace squat
