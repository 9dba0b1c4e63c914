// Llama-family decoder (Llama 2/3, Mistral, Qwen2) in LibTorch ATen: RMSNorm, RoPE with
// llama3/linear scaling, GQA, SwiGLU, tied or untied lm_head, optional q/k/v bias.
// Internal to runtime/ (includes ATen; never include from server/).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"
#include "runtime/model_config.h"

namespace squat {

class CheckpointReader;

struct ModelLoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  // "auto": float32 on CPU, the checkpoint's dtype (float16/bfloat16) on CUDA;
  // or "float32", "float16", "bfloat16".
  std::string dtype = "auto";
};

class LlamaModel {
 public:
  // Copies (and converts) every weight onto the device; errors name a missing or
  // mis-shaped tensor.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const CheckpointReader& checkpoint,
                                                          const ModelConfig& config,
                                                          const ModelLoadOptions& options);
  ~LlamaModel();

  // Runs tokens (int64 [T]) at positions [cache.length(), cache.length() + T), hands each
  // layer's queries, keys and values to the cache (which stores them and computes attention),
  // and returns float32 logits: [T, vocab] or, with last_only, [1, vocab] for the last position.
  at::Tensor Forward(const at::Tensor& tokens, kv::SequenceKvCache& cache, bool last_only = true);

  // What the KV cache needs to know about this model (sizes, dtype, device, RoPE frequencies).
  kv::KvModelShape kv_shape() const;

  const ModelConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  struct Layer;
  LlamaModel(const ModelConfig& config, at::Device device, at::ScalarType dtype);
  ModelConfig config_;
  at::Device device_;
  at::ScalarType dtype_;
  int64_t weight_bytes_ = 0;
  at::Tensor embed_tokens_;  // [vocab, hidden]
  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  at::Tensor lm_head_;       // [vocab, hidden] (aliases embed_tokens_ when tied)
  at::Tensor inv_freq_;      // [head_dim / 2], float32, scaling applied
};

}  // namespace squat
