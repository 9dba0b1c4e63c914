// Paged decode attention (decode_attention.h): one launch per layer for a batch of sequences of
// one format, split-KV when the grid would not fill the device.
// Arithmetic that must reproduce the CPU quantizer (squat_math.cpp) uses explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...) so that nvcc cannot contract it into FMAs.
#include "kernels/decode_attention.h"

#include <algorithm>
#include <cstdint>

#include "kernels/device_common.cuh"

namespace squat::kernels {
namespace {

constexpr int kThreads = 128;  // attention block
constexpr int kTile = 32;      // tokens per attention tile (one warp lane per token)
constexpr int kParts = kThreads / kTile;

// ---------------------------------------------------------------------------------------------
// Decode attention: one block per (sequence, KV head, split); tiles of 32 tokens, online
// softmax. Without split-KV the block covers all N tokens and writes the output; with it, the
// block covers one chunk of split_tokens and writes its partial (max, sum, output) for
// SplitReduceKernel.
// Each tile first resolves its tokens' pages once (one lane per token); then full-precision
// rows are read 16 bytes at a time, packed keys one word (fpi tokens of a channel) and packed
// values one word (fpi channels of a token) per thread.

// Head dim and bit widths are template parameters so that index arithmetic is by constants and
// the unpacking loops unroll (the kernel is instruction-bound at 2 bits otherwise).
template <typename T, int kD, int kKBits, int kVBits, bool kQuantized, bool kPreRope>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(DecodeArgs a) {
  extern __shared__ float smem[];
  __shared__ const char* key_src[kTile];    // full-precision row, or the quantized page's layer base
  __shared__ const char* value_src[kTile];
  __shared__ int32_t token_off[kTile];      // token's index inside its quantized page
  const PoolLayout& L = a.layout;
  const DecodeSequence S = a.sequences[blockIdx.x];
  const int h = blockIdx.y, tid = threadIdx.x, split = blockIdx.z;
  const bool split_kv = a.num_splits > 1;
  const int32_t N = S.tokens;
  const int32_t t_begin = split_kv ? split * a.split_tokens : 0;
  const int32_t t_end = split_kv ? min(N, t_begin + a.split_tokens) : N;
  if (t_begin >= t_end) return;  // a chunk past this sequence's end (whole block, before any barrier)
  constexpr int D = kD, half_d = kD / 2;
  constexpr int pitch = kD + 1;  // tile row pitch: conflict-free column reads
  const int n_rep = L.q_heads / L.kv_heads;
  float* q_s = smem;                          // [n_rep][D], pre-scaled by 1/sqrt(d)
  float* acc = q_s + n_rep * D;               // [n_rep][D]
  float* tile = acc + n_rep * D;              // [kTile][pitch]
  float* scores = tile + kTile * pitch;       // [n_rep][kTile]
  float* partial = scores + n_rep * kTile;    // [kParts][n_rep][kTile]
  float* run_max = partial + kParts * n_rep * kTile;  // [n_rep]
  float* run_sum = run_max + n_rep;           // [n_rep]
  float* rescale = run_sum + n_rep;           // [n_rep]

  const int32_t* pages = a.page_ids;
  constexpr int fpi_k = 32 / kKBits, fpi_v = 32 / kVBits;
  const int G = L.group_size;
  const int32_t ring = L.residual_length + 1;
  const int32_t spp = L.slots_per_page, tpp = L.tokens_per_page;
  constexpr int kPerVec = 16 / sizeof(T);
  constexpr int vecs = D / kPerVec;
  const char* pool = static_cast<const char*>(L.pool);
  QuantOffsets qo{};
  if (kQuantized) qo = QuantLayerOffsets(L);
  const int key_words_per_row = kQuantized ? tpp / fpi_k : 0, key_meta_per_row = kQuantized ? tpp / G : 0;
  constexpr int value_words_per_row = D / fpi_v;
  const int value_meta_per_row = D / G;

  // Append the new token's key and value: the block whose chunk holds token N - 1 (the only
  // one that reads it; no other token shares its slots).
  if (N - 1 >= t_begin && N - 1 < t_end) {
    const T* k_src = static_cast<const T*>(a.k_new) + S.row * a.k_row_stride + static_cast<int64_t>(h) * D;
    const T* v_src = static_cast<const T*>(a.v_new) + S.row * a.v_row_stride + static_cast<int64_t>(h) * D;
    int32_t key_page, key_slot, value_page, value_slot;
    if (kQuantized) {
      key_page = pages[S.residual_pages + S.key_slot / spp];
      key_slot = S.key_slot % spp;
      const int32_t vs = (N - 1) % ring;
      value_page = pages[S.residual_pages + vs / spp];
      value_slot = vs % spp;
    } else {
      key_page = value_page = pages[S.data_pages + (N - 1) / spp];
      key_slot = value_slot = (N - 1) % spp;
    }
    T* k_dst = SlotRow<T>(L, key_page, a.layer, 0, h, key_slot);
    T* v_dst = SlotRow<T>(L, value_page, a.layer, 1, h, value_slot);
    for (int c = tid; c < D; c += kThreads) {
      k_dst[c] = k_src[c];
      v_dst[c] = v_src[c];
    }
  }
  const float scale = rsqrtf(static_cast<float>(D));
  for (int e = tid; e < n_rep * D; e += kThreads) {
    const int j = e / D, c = e % D;
    const T* q = static_cast<const T*>(a.q) + S.row * a.q_row_stride + static_cast<int64_t>(h * n_rep + j) * D;
    q_s[e] = ToFloat(q[c]) * scale;
    acc[e] = 0.f;
  }
  for (int j = tid; j < n_rep; j += kThreads) {
    run_max[j] = -INFINITY;
    run_sum[j] = 0.f;
  }
  __syncthreads();  // also makes the appended token visible to the block

  for (int32_t t0 = t_begin; t0 < t_end; t0 += kTile) {
    const int count = min(kTile, t_end - t0);
    // Quantized keys / values of the tile are its first qk / qv tokens (N_q and N_v are
    // multiples of R and of fpi, tiles start at multiples of 32).
    const int qk = kQuantized ? max(0, min(count, S.quantized_keys - t0)) : 0;
    const int qv = kQuantized ? max(0, min(count, S.quantized_values - t0)) : 0;
    if (tid < count) {
      const int i = tid, n = t0 + i;
      if (kQuantized) {
        const char* quant_base = nullptr;
        if (i < qk || i < qv) {
          quant_base = pool + static_cast<int64_t>(pages[S.data_pages + n / tpp]) * L.page_bytes + a.layer * qo.layer_bytes;
          token_off[i] = n % tpp;
        }
        if (i < qk) {
          key_src[i] = quant_base;
        } else {
          const int32_t slot = n - S.quantized_keys;
          key_src[i] = reinterpret_cast<const char*>(SlotRow<T>(L, pages[S.residual_pages + slot / spp], a.layer, 0, h, slot % spp));
        }
        if (i < qv) {
          value_src[i] = quant_base;
        } else {
          const int32_t slot = n % ring;
          value_src[i] = reinterpret_cast<const char*>(SlotRow<T>(L, pages[S.residual_pages + slot / spp], a.layer, 1, h, slot % spp));
        }
      } else {
        const int32_t page = pages[S.data_pages + n / spp];
        key_src[i] = reinterpret_cast<const char*>(SlotRow<T>(L, page, a.layer, 0, h, n % spp));
        value_src[i] = reinterpret_cast<const char*>(SlotRow<T>(L, page, a.layer, 1, h, n % spp));
      }
    }
    __syncthreads();
    // ---- keys of the tile -> tile[i][c] (float, dequantized)
    if (kQuantized && qk > 0) {
      const int words = qk / fpi_k;  // per channel
      for (int e = tid; e < D * words; e += kThreads) {
        const int c = e % D, i0 = (e / D) * fpi_k;
        const char* base = key_src[i0];
        const int off = token_off[i0];
        const int64_t row = static_cast<int64_t>(h) * D + c;
        const uint32_t word = reinterpret_cast<const uint32_t*>(base + qo.key_words)[row * key_words_per_row + off / fpi_k];
        const int64_t meta = row * key_meta_per_row + off / G;
        const float s = __half2float(reinterpret_cast<const __half*>(base + qo.key_scale)[meta]);
        const float m = __half2float(reinterpret_cast<const __half*>(base + qo.key_min)[meta]);
        constexpr uint32_t mask = (1u << kKBits) - 1u;
#pragma unroll
        for (int k = 0; k < fpi_k; ++k) {
          tile[(i0 + k) * pitch + c] = fmaf(static_cast<float>((word >> (kKBits * k)) & mask), s, m);
        }
      }
    }
    for (int e = tid; e < (count - qk) * vecs; e += kThreads) {
      const int i = qk + e / vecs;
      const int vec = e % vecs;
      const uint4 raw = reinterpret_cast<const uint4*>(key_src[i])[vec];
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPerVec; ++k) tile[i * pitch + vec * kPerVec + k] = ToFloat(x[k]);
    }
    __syncthreads();
    if (kPreRope) {
      for (int e = tid; e < count * half_d; e += kThreads) {
        const int i = e / half_d, c = e % half_d;
        const float* angles = a.rope_table + static_cast<int64_t>(t0 + i) * D;
        RotatePair(tile[i * pitch + c], tile[i * pitch + c + half_d], angles[c], angles[half_d + c],
                   &tile[i * pitch + c], &tile[i * pitch + c + half_d]);
      }
      __syncthreads();
    }
    // ---- scores: thread (part, i) sums a quarter of the channels of token i
    {
      const int i = tid % kTile, part = tid / kTile;
      constexpr int chunk = D / kParts;
      const int c0 = part * chunk;
      for (int j = 0; j < n_rep; ++j) {
        float sum = 0.f;
        const float* q = q_s + j * D + c0;
        const float* k = tile + i * pitch + c0;
#pragma unroll
        for (int c = 0; c < chunk; ++c) sum = fmaf(q[c], k[c], sum);
        partial[(part * n_rep + j) * kTile + i] = sum;
      }
    }
    __syncthreads();
    // ---- online softmax, one warp per query head
    {
      const int warp = tid / 32, lane = tid % 32;
      for (int j = warp; j < n_rep; j += kThreads / 32) {
        float s = -INFINITY;
        if (lane < count) {
          s = 0.f;
          for (int part = 0; part < kParts; ++part) s += partial[(part * n_rep + j) * kTile + lane];
        }
        const float old_max = run_max[j];
        const float new_max = fmaxf(old_max, WarpMax(s));
        const float p = lane < count ? __expf(s - new_max) : 0.f;
        const float total = WarpSum(p);
        scores[j * kTile + lane] = p;
        if (lane == 0) {
          const float alpha = old_max == -INFINITY ? 0.f : __expf(old_max - new_max);
          run_sum[j] = run_sum[j] * alpha + total;
          run_max[j] = new_max;
          rescale[j] = alpha;
        }
      }
    }
    // ---- values of the tile -> tile[i][c] (the keys are no longer needed)
    if (kQuantized && qv > 0) {
      // Lanes walk tokens (conflict-free smem stores); the tile's words are reused from L1.
      for (int e = tid; e < kTile * value_words_per_row; e += kThreads) {
        const int i = e % kTile, w = e / kTile;
        if (i >= qv) continue;
        const char* base = value_src[i];
        const int64_t row = static_cast<int64_t>(h) * tpp + token_off[i];
        const uint32_t word = reinterpret_cast<const uint32_t*>(base + qo.value_words)[row * value_words_per_row + w];
        const int c0 = w * fpi_v;
        const int64_t meta = row * value_meta_per_row + c0 / G;
        const float s = __half2float(reinterpret_cast<const __half*>(base + qo.value_scale)[meta]);
        const float m = __half2float(reinterpret_cast<const __half*>(base + qo.value_min)[meta]);
        constexpr uint32_t mask = (1u << kVBits) - 1u;
#pragma unroll
        for (int k = 0; k < fpi_v; ++k) {
          tile[i * pitch + c0 + k] = fmaf(static_cast<float>((word >> (kVBits * k)) & mask), s, m);
        }
      }
    }
    for (int e = tid; e < (count - qv) * vecs; e += kThreads) {
      const int i = qv + e / vecs;
      const int vec = e % vecs;
      const uint4 raw = reinterpret_cast<const uint4*>(value_src[i])[vec];
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPerVec; ++k) tile[i * pitch + vec * kPerVec + k] = ToFloat(x[k]);
    }
    __syncthreads();
    for (int e = tid; e < n_rep * D; e += kThreads) {
      const int j = e / D, c = e % D;
      float sum = acc[e] * rescale[j];
      const float* p = scores + j * kTile;
      for (int i = 0; i < count; ++i) sum = fmaf(p[i], tile[i * pitch + c], sum);
      acc[e] = sum;
    }
    __syncthreads();
  }
  if (!split_kv) {
    for (int e = tid; e < n_rep * D; e += kThreads) {
      const int j = e / D, c = e % D;
      T* out = static_cast<T*>(a.out) + S.row * a.out_row_stride + static_cast<int64_t>(h * n_rep + j) * D;
      out[c] = FromFloat<T>(acc[e] / run_sum[j]);
    }
    return;
  }
  // Partial of (sequence, query head, split) at index (b * H_q + head) * num_splits + split.
  const int64_t partials = static_cast<int64_t>(a.num_sequences) * L.q_heads * a.num_splits;
  float* ws_max = a.workspace;
  float* ws_sum = ws_max + partials;
  float* ws_acc = ws_sum + partials;
  for (int e = tid; e < n_rep * D; e += kThreads) {
    const int j = e / D, c = e % D;
    const int64_t idx = (static_cast<int64_t>(blockIdx.x) * L.q_heads + h * n_rep + j) * a.num_splits + split;
    ws_acc[idx * D + c] = acc[e];
    if (c == 0) {
      ws_max[idx] = run_max[j];
      ws_sum[idx] = run_sum[j];
    }
  }
}

// Combines the split partials of one (sequence, query head): one thread per channel.
template <typename T>
__global__ void SplitReduceKernel(DecodeArgs a) {
  const DecodeSequence S = a.sequences[blockIdx.x];
  const int head = blockIdx.y, D = a.layout.head_dim;
  const int64_t partials = static_cast<int64_t>(a.num_sequences) * a.layout.q_heads * a.num_splits;
  const float* ws_max = a.workspace;
  const float* ws_sum = ws_max + partials;
  const float* ws_acc = ws_sum + partials;
  const int used = min(a.num_splits, (S.tokens + a.split_tokens - 1) / a.split_tokens);
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * a.layout.q_heads + head) * a.num_splits;
  float m = -INFINITY;
  for (int s = 0; s < used; ++s) m = fmaxf(m, ws_max[first + s]);
  float total = 0.f;
  for (int s = 0; s < used; ++s) total += expf(ws_max[first + s] - m) * ws_sum[first + s];
  T* out = static_cast<T*>(a.out) + S.row * a.out_row_stride + static_cast<int64_t>(head) * D;
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < used; ++s) sum = fmaf(expf(ws_max[first + s] - m), ws_acc[(first + s) * D + c], sum);
    out[c] = FromFloat<T>(sum / total);
  }
}

size_t AttentionSmemBytes(const PoolLayout& L) {
  const int n_rep = L.q_heads / L.kv_heads, D = L.head_dim;
  const size_t floats = 2 * n_rep * D + kTile * (D + 1) + n_rep * kTile + kParts * n_rep * kTile + 3 * n_rep;
  return floats * sizeof(float);
}

template <typename T, int kD, int kKBits, int kVBits, bool kQuantized, bool kPreRope>
cudaError_t LaunchAttention(const DecodeArgs& a, cudaStream_t stream) {
  const size_t smem = AttentionSmemBytes(a.layout);
  auto kernel = DecodeAttentionKernel<T, kD, kKBits, kVBits, kQuantized, kPreRope>;
  if (cudaError_t e = AllowSmem(kernel, smem); e != cudaSuccess) return e;
  const int splits = a.num_splits > 1 ? a.num_splits : 1;
  kernel<<<dim3(a.num_sequences, a.layout.kv_heads, splits), kThreads, smem, stream>>>(a);
  if (splits == 1) return cudaGetLastError();
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  SplitReduceKernel<T><<<dim3(a.num_sequences, a.layout.q_heads), a.layout.head_dim, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int kD, int kKBits, int kVBits>
cudaError_t ByRope(const DecodeArgs& a, cudaStream_t stream) {
  return a.pre_rope ? LaunchAttention<T, kD, kKBits, kVBits, true, true>(a, stream)
                    : LaunchAttention<T, kD, kKBits, kVBits, true, false>(a, stream);
}

template <typename T, int kD>
cudaError_t ByBits(const DecodeArgs& a, cudaStream_t stream) {
  if (!a.quantized) return LaunchAttention<T, kD, 2, 2, false, false>(a, stream);
  const int k = a.layout.k_bits, v = a.layout.v_bits;
  if (k == 2 && v == 2) return ByRope<T, kD, 2, 2>(a, stream);
  if (k == 2 && v == 4) return ByRope<T, kD, 2, 4>(a, stream);
  if (k == 4 && v == 2) return ByRope<T, kD, 4, 2>(a, stream);
  return ByRope<T, kD, 4, 4>(a, stream);
}

template <typename T>
cudaError_t DispatchAttention(const DecodeArgs& a, cudaStream_t stream) {
  switch (a.layout.head_dim) {
    case 64: return ByBits<T, 64>(a, stream);
    case 128: return ByBits<T, 128>(a, stream);
    case 256: return ByBits<T, 256>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
struct AttentionLauncher {
  static cudaError_t Run(const DecodeArgs& a, cudaStream_t s) { return DispatchAttention<T>(a, s); }
};

}  // namespace

int PagedDecodeAttention(const DecodeArgs& args, void* stream) {
  if (args.num_sequences == 0) return cudaSuccess;
  if (!LayoutSupported(args.layout, args.quantized) || (args.pre_rope && args.rope_table == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (args.num_splits > 1 &&
      (args.workspace == nullptr || args.split_tokens <= 0 || args.split_tokens % kTile != 0 || args.num_splits > 65535)) {
    return cudaErrorInvalidValue;
  }
  return ByDType<AttentionLauncher>(args.layout.dtype, args, static_cast<cudaStream_t>(stream));
}

DecodeSplit ChooseDecodeSplit(int32_t num_sequences, int32_t kv_heads, int32_t max_tokens) {
  static const int sms = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return count;
  }();
  constexpr int32_t kMinSplitTokens = 256;  // shorter chunks cost more in partials than they gain
  DecodeSplit split;
  const int64_t blocks = static_cast<int64_t>(num_sequences) * kv_heads;
  // About four resident blocks per SM hide the page reads' latency.
  const int64_t target = 4LL * sms;
  if (sms <= 0 || blocks <= 0 || blocks >= target || max_tokens <= kMinSplitTokens) return split;
  int64_t splits = (target + blocks - 1) / blocks;
  splits = std::min<int64_t>(splits, (max_tokens + kMinSplitTokens - 1) / kMinSplitTokens);
  if (splits <= 1) return split;
  int32_t chunk = static_cast<int32_t>((max_tokens + splits - 1) / splits);
  chunk = (chunk + kTile - 1) / kTile * kTile;
  const int32_t count = (max_tokens + chunk - 1) / chunk;
  if (count <= 1) return split;
  split.num_splits = count;
  split.split_tokens = chunk;
  return split;
}

int64_t DecodeWorkspaceFloats(int32_t num_sequences, int32_t q_heads, int32_t head_dim, int32_t num_splits) {
  return static_cast<int64_t>(num_sequences) * q_heads * num_splits * (head_dim + 2);
}

}  // namespace squat::kernels
