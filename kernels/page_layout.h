// The page layout of the KV pool, in one place: plain C++ functions usable from host code
// (kvcache/: stores, capacity math, the reference attention backend) and from device code (the
// kernels), so that every reader and writer of a page computes the same offsets.
//
// The pool is one byte array of `page_bytes` pages; page p starts at byte p * page_bytes.
// - Full-precision slot pages (fp16 format, residual windows, prompt staging): per layer, K
//   [H_kv, slots_per_page, d] then V [H_kv, slots_per_page, d], in the compute dtype.
// - Quantized pages: per layer one block of K words int32 [H_kv, d, tpp / (32 / k_bits)]
//   (tokens packed, LSB first), V words int32 [H_kv, tpp, d / (32 / v_bits)] (channels packed),
//   then fp16 K scale, K min [H_kv, d, tpp / G], V scale, V min [H_kv, tpp, d / G].
// - SQuat state: float32 C_0 .. C_{T-2} of each (layer, KV head), (layer, head)-major, laid
//   over the state pages from float 0 of the first.
// - RoPE table (one per model, not in the pool): float32 [positions, d], row p = cos(p theta_j)
//   for j < d / 2, then sin(p theta_j).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SQUAT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SQUAT_HOST_DEVICE inline
#endif

namespace squat::kernels {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

SQUAT_HOST_DEVICE int32_t DTypeBytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

struct PoolLayout {
  void* pool = nullptr;  // device base of page 0
  int64_t page_bytes = 0;
  int32_t num_layers = 0, kv_heads = 0, q_heads = 0, head_dim = 0;
  DType dtype = DType::kFloat16;  // full-precision slots, q, new k/v, output
  int32_t slots_per_page = 0;     // full-precision token slots per page
  // Quantized formats only.
  int32_t k_bits = 2, v_bits = 2, group_size = 32, residual_length = 32;
  int32_t tokens_per_page = 0;  // quantized tokens per page
};

// Whether the kernels handle this layout (head_dim 64, 128 or 256, 16-byte aligned pages; for
// quantized formats bits 2 or 4, G dividing d and the page's tokens, ...); every kernel entry
// point checks it, and the CUDA attention backend asks it before choosing the kernels.
inline bool LayoutSupported(const PoolLayout& L, bool quantized) {
  if (L.pool == nullptr || L.page_bytes <= 0 || L.kv_heads <= 0 || L.q_heads % L.kv_heads != 0 ||
      (L.head_dim != 64 && L.head_dim != 128 && L.head_dim != 256) || L.slots_per_page <= 0 ||
      L.page_bytes % 16 != 0 || reinterpret_cast<uintptr_t>(L.pool) % 16 != 0) {
    return false;
  }
  if (!quantized) return true;
  const bool bits_ok = (L.k_bits == 2 || L.k_bits == 4) && (L.v_bits == 2 || L.v_bits == 4);
  return bits_ok && L.group_size > 0 && L.head_dim % L.group_size == 0 && L.tokens_per_page > 0 &&
         L.tokens_per_page % L.group_size == 0 && L.group_size % (32 / L.k_bits) == 0 &&
         L.head_dim % (32 / L.v_bits) == 0 && L.residual_length > 0;
}

// ---- full-precision slot pages

// Element index, inside its page, of channel 0 of (layer, part 0 = K / 1 = V, head, slot).
SQUAT_HOST_DEVICE int64_t SlotElement(int64_t kv_heads, int64_t slots_per_page, int64_t head_dim, int64_t layer,
                                      int64_t part, int64_t head, int64_t slot) {
  return ((2 * layer + part) * kv_heads + head) * slots_per_page * head_dim + slot * head_dim;
}

// Bytes of one full-precision token slot over every layer, K and V.
SQUAT_HOST_DEVICE int64_t SlotTokenBytes(int64_t num_layers, int64_t kv_heads, int64_t head_dim,
                                         int64_t element_bytes) {
  return num_layers * 2 * kv_heads * head_dim * element_bytes;
}

// ---- quantized pages

// Byte offsets of one layer's blocks inside a quantized page of `tokens` tokens (per layer
// block starts at layer * layer_bytes). int32 blocks first so that every block stays aligned.
struct QuantOffsets {
  int64_t layer_bytes = 0;
  int64_t key_words = 0, value_words = 0, key_scale = 0, key_min = 0, value_scale = 0, value_min = 0;
};

SQUAT_HOST_DEVICE QuantOffsets QuantLayerOffsets(int64_t kv_heads, int64_t head_dim, int64_t tokens, int k_bits,
                                                int v_bits, int64_t group_size) {
  const int64_t key_words = kv_heads * head_dim * (tokens / (32 / k_bits));
  const int64_t value_words = kv_heads * tokens * (head_dim / (32 / v_bits));
  const int64_t key_meta = kv_heads * head_dim * (tokens / group_size);
  const int64_t value_meta = kv_heads * tokens * (head_dim / group_size);
  QuantOffsets o;
  o.key_words = 0;
  o.value_words = key_words * 4;
  o.key_scale = (key_words + value_words) * 4;
  o.key_min = o.key_scale + key_meta * 2;
  o.value_scale = o.key_min + key_meta * 2;
  o.value_min = o.value_scale + value_meta * 2;
  o.layer_bytes = o.value_min + value_meta * 2;
  return o;
}

SQUAT_HOST_DEVICE QuantOffsets QuantLayerOffsets(const PoolLayout& L) {
  return QuantLayerOffsets(L.kv_heads, L.head_dim, L.tokens_per_page, L.k_bits, L.v_bits, L.group_size);
}

// Bytes of `tokens` quantized tokens over every layer (tokens a multiple of G and of the
// codes per word of both bit widths).
SQUAT_HOST_DEVICE int64_t QuantizedTokensBytes(int64_t num_layers, int64_t kv_heads, int64_t head_dim,
                                               int64_t tokens, int k_bits, int v_bits, int64_t group_size) {
  return num_layers * QuantLayerOffsets(kv_heads, head_dim, tokens, k_bits, v_bits, group_size).layer_bytes;
}

// ---- SQuat state

// Floats of C_0 .. C_{T-2} of one KV head (T = d / g): sum of g * (d - (i + 1) g).
SQUAT_HOST_DEVICE int64_t SquatStateFloatsPerHead(int64_t head_dim, int64_t block_size) {
  int64_t floats = 0;
  for (int64_t done = block_size; done < head_dim; done += block_size) floats += block_size * (head_dim - done);
  return floats;
}

// Float index of the first C_i float of (layer, head) in the state pages.
SQUAT_HOST_DEVICE int64_t SquatStateHeadOffset(int64_t layer, int64_t head, int64_t kv_heads,
                                               int64_t floats_per_head) {
  return (layer * kv_heads + head) * floats_per_head;
}

// ---- RoPE table

// The rotation of one channel pair (x1 = channel j, x2 = channel j + d / 2) by the table's
// cos c and sin s, rounded as the model's float32 `x * cos + rotate_half(x) * sin` (each
// product rounded, then the sum): y1 = x1 c - x2 s, y2 = x2 c + x1 s.
#if defined(__CUDACC__)
__device__ __forceinline__ void RotatePair(float x1, float x2, float c, float s, float* y1, float* y2) {
  *y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
  *y2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}
#endif

}  // namespace squat::kernels
