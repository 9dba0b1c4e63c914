// What a Llama model takes in memory, from its config alone and without torch: the dtype the
// loader gives the weights, the bytes of the parameters it allocates, and the activation
// workspace of one step. LlamaModel and the start-up estimate (EstimateServingMemory in
// runtime/engine/engine.h) both call these, so the estimate cannot disagree with the loaded model.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"

namespace squat {

// The dtype ("float32", "float16" or "bfloat16") the weights are loaded in. `requested` is
// "auto" or one of those names ("float" and "half" accepted); "auto" keeps a checkpoint whose
// embedding is stored in half precision half on CUDA and computes in float32 on CPU. The
// stored dtype decides, not config.json's torch_dtype. INVALID_ARGUMENT for an unknown name or
// a non-float stored dtype under "auto".
absl::StatusOr<std::string> LoadedWeightDtype(const std::string& requested, bool cuda, DType stored);
int64_t DtypeBytes(const std::string& dtype);  // of LoadedWeightDtype's names

// True for "cuda" and "cuda:N", false for "cpu"; INVALID_ARGUMENT for any other name.
absl::StatusOr<bool> IsCudaDevice(const std::string& device);

// Bytes of every parameter LlamaModel::Load allocates (embedding, per-layer norms, fused qkv
// (+ bias), o_proj, fused gate/up, down, final norm, lm_head unless tied) at `element_bytes`
// each. OUT_OF_RANGE when a corrupt config's sizes give more than 2^62 bytes.
absl::StatusOr<int64_t> WeightBytes(const ModelConfig& config, int64_t element_bytes);

// Device bytes a step of `tokens` rows producing `sequences` logit rows needs for activations
// (ATen temporaries and float32 norms, with margin for the caching allocator), plus the RoPE
// table of `rope_positions` rows: the workspace set aside before the KV pool takes the rest.
int64_t WorkspaceBytes(const ModelConfig& config, int64_t element_bytes, int64_t tokens, int64_t sequences,
                       int64_t rope_positions);

}  // namespace squat
