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
#include "runtime/checkpoint/model_config.h"

namespace squat {

namespace kv {
class AttentionBackend;
class StepBatch;
}  // namespace kv

class CheckpointReader;

struct ModelLoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  // "auto" or a dtype name: runtime/model/model_memory.h's LoadedWeightDtype decides.
  std::string dtype = "auto";
  // Rows of the RoPE table (positions the model can run at); 0: max_position_embeddings.
  int64_t max_positions = 0;
};

// The ATen type of LoadedWeightDtype's names (runtime/model/model_memory.h).
at::ScalarType ScalarTypeOf(const std::string& dtype);
// What the KV cache needs to know of a model with this config, dtype and device (no RoPE table).
kv::KvModelShape KvShapeOf(const ModelConfig& config, at::ScalarType dtype, at::Device device);

class LlamaModel {
 public:
  // Copies (and converts) every weight onto the device, in LoadedWeightDtype's dtype; errors
  // name a missing or mis-shaped tensor. `config` is ParseModelConfig's (it is re-validated).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const CheckpointReader& checkpoint,
                                                          const ModelConfig& config,
                                                          const ModelLoadOptions& options);
  ~LlamaModel();

  // One step: every linear layer once over the batch's rows (its tokens at its positions), and
  // one attention call per layer through `backend`, which also stores the rows' keys and values
  // in their sequences' pages. Returns float32 logits [batch.num_logits(), vocab] of the rows
  // the batch asks for. The caller runs backend.BeginStep before and batch.Finish after
  // (runtime/model/step_runner.h does all three).
  at::Tensor Forward(const kv::StepBatch& batch, kv::AttentionBackend& backend);

  // What the KV cache needs to know about this model (sizes, dtype, device, RoPE table).
  kv::KvModelShape kv_shape() const;

  const ModelConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  const std::string& dtype_name() const { return dtype_name_; }  // LoadedWeightDtype's name
  int64_t weight_bytes() const { return weight_bytes_; }
  // runtime/model/model_memory.h's WorkspaceBytes for this model (its dtype and RoPE table).
  int64_t WorkspaceBytes(int64_t tokens, int64_t sequences) const;

 private:
  struct Layer;
  LlamaModel(const ModelConfig& config, at::Device device, std::string dtype_name);
  at::Tensor Logits(const at::Tensor& hidden) const;  // final norm + lm_head, float32
  ModelConfig config_;
  at::Device device_;
  std::string dtype_name_;
  at::ScalarType dtype_;
  int64_t weight_bytes_ = 0;
  at::Tensor embed_tokens_;  // [vocab, hidden]
  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  at::Tensor lm_head_;       // [vocab, hidden] (aliases embed_tokens_ when tied)
  at::Tensor rope_table_;    // kvcache/rope.h: float32 [positions, head_dim] on the device
};

}  // namespace squat
