#include "runtime/model/model_memory.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace squat {

absl::StatusOr<std::string> LoadedWeightDtype(const std::string& requested, bool cuda, DType stored) {
  if (requested == "float32" || requested == "float") return std::string("float32");
  if (requested == "float16" || requested == "half") return std::string("float16");
  if (requested == "bfloat16") return std::string("bfloat16");
  if (requested != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype '", requested, "' (expected auto, float32, float16 or bfloat16)"));
  }
  switch (stored) {
    case DType::kF16: return std::string(cuda ? "float16" : "float32");
    case DType::kBF16: return std::string(cuda ? "bfloat16" : "float32");
    case DType::kF32:
    case DType::kF64: return std::string("float32");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor 'model.embed_tokens.weight': unsupported weight dtype ", DTypeName(stored)));
  }
}

int64_t DtypeBytes(const std::string& dtype) { return dtype == "float16" || dtype == "bfloat16" ? 2 : 4; }

absl::StatusOr<bool> IsCudaDevice(const std::string& device) {
  if (device == "cpu") return false;
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) return true;
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", device, "' (expected cpu, cuda or cuda:N)"));
}

absl::StatusOr<int64_t> WeightBytes(const ModelConfig& c, int64_t element_bytes) {
  // Wide arithmetic: a corrupt config can name sizes whose product overflows 64 bits.
  using Wide = unsigned __int128;
  const Wide hidden = static_cast<uint64_t>(c.hidden_size);
  const Wide vocab = static_cast<uint64_t>(c.vocab_size);
  const Wide inter = static_cast<uint64_t>(c.intermediate_size);
  const Wide q_rows = static_cast<Wide>(static_cast<uint64_t>(c.num_attention_heads)) * static_cast<uint64_t>(c.head_dim);
  const Wide kv_rows =
      static_cast<Wide>(static_cast<uint64_t>(c.num_key_value_heads)) * static_cast<uint64_t>(c.head_dim);
  Wide per_layer = 2 * hidden                        // input and post-attention norms
                   + (q_rows + 2 * kv_rows) * hidden  // q, k, v
                   + hidden * q_rows                  // o
                   + 3 * inter * hidden;              // gate, up, down
  if (c.attention_bias) per_layer += q_rows + 2 * kv_rows;
  Wide params = vocab * hidden + hidden + per_layer * static_cast<uint64_t>(c.num_hidden_layers);
  if (!c.tie_word_embeddings) params += vocab * hidden;
  const Wide bytes = params * static_cast<uint64_t>(element_bytes);
  if (bytes > static_cast<Wide>(std::numeric_limits<int64_t>::max() / 2)) {
    return absl::OutOfRangeError("the model's sizes give more than 2^62 bytes of weights; config.json is corrupt");
  }
  return static_cast<int64_t>(bytes);
}

int64_t WorkspaceBytes(const ModelConfig& config, int64_t element, int64_t tokens, int64_t sequences,
                       int64_t rope_positions) {
  const int64_t hidden = config.hidden_size, inter = config.intermediate_size, d = config.head_dim;
  const int64_t qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * d;
  // Alive at once in a layer, per row: residual stream and its norm, the qkv projection and its
  // rotated q/k, the attention output and o_proj, gate/up and the SwiGLU product; RMSNorm's
  // float32 copies; the row's cos/sin (float32 table rows, then the compute dtype).
  const int64_t per_row = (6 * hidden + 2 * qkv + 4 * inter) * element + 2 * hidden * 4 + 2 * d * (4 + element);
  // Logits: the lm_head output, its float32 copy and the final norm, per sequence.
  const int64_t logits = sequences * (config.vocab_size * (element + 4) + hidden * 4);
  // Half again for the caching allocator's rounding and fragmentation; the RoPE table
  // (kvcache/rope.h: float32 [positions, head_dim]) is allocated once, exactly.
  return (tokens * per_row + logits) * 3 / 2 + rope_positions * d * 4;
}

}  // namespace squat
