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

// One sequence's share of a batched forward pass: the next num_tokens rows of the token
// batch, at positions [cache->length(), cache->length() + num_tokens).
struct ForwardSegment {
  kv::SequenceKvCache* cache = nullptr;
  int64_t num_tokens = 0;
  bool prompt_complete = true;  // false: a prompt chunk with more to come (Commit's flag)
};

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

  // Several sequences in one pass: tokens (int64 [N]) are the segments' rows one after the
  // other. Every linear layer runs once over the N rows; attention runs per segment through
  // its cache; each cache is committed at the end. Returns float32 logits [segments, vocab]
  // of each segment's last row.
  at::Tensor ForwardBatch(const at::Tensor& tokens, const std::vector<ForwardSegment>& segments);

  // On CUDA, single-token decode segments go through the fused batched kernels
  // (kvcache/batched_decode.h) unless this is turned off (tests and benchmarks compare both).
  void set_batched_decode(bool enabled) { batched_decode_ = enabled; }

  // What the KV cache needs to know about this model (sizes, dtype, device, RoPE frequencies).
  kv::KvModelShape kv_shape() const;

  const ModelConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // Estimated device bytes of the activations of one forward pass over `tokens` rows that
  // produces `sequences` logit rows (ATen temporaries and float32 norms included, with margin
  // for the caching allocator): the workspace set aside before the KV pool takes the rest.
  int64_t WorkspaceBytes(int64_t tokens, int64_t sequences) const;

 private:
  struct Layer;
  LlamaModel(const ModelConfig& config, at::Device device, at::ScalarType dtype);
  // The decoder stack over all rows, caches committed: hidden states [N, hidden] before the
  // final norm.
  at::Tensor RunLayers(const at::Tensor& tokens, const std::vector<ForwardSegment>& segments);
  at::Tensor Logits(const at::Tensor& hidden) const;  // final norm + lm_head, float32
  ModelConfig config_;
  at::Device device_;
  at::ScalarType dtype_;
  int64_t weight_bytes_ = 0;
  bool batched_decode_ = true;
  at::Tensor embed_tokens_;  // [vocab, hidden]
  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  at::Tensor lm_head_;       // [vocab, hidden] (aliases embed_tokens_ when tied)
  at::Tensor inv_freq_;      // [head_dim / 2], float32, scaling applied
};

}  // namespace squat
