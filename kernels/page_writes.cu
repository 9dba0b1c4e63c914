// Writes into the pool's pages (page_writes.h): new key/value rows into full-precision slots, and
// the quantization tasks that move full windows into quantized pages (KIVI keys per channel
// group, SQuat keys block by block with error feedback, values per token).
// Arithmetic that must reproduce the CPU quantizer (squat_math.cpp) uses explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...) so that nvcc cannot contract it into FMAs.
#include "kernels/page_writes.h"

#include <cstdint>

#include "kernels/device_common.cuh"

namespace squat::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Quantization tasks: one block per (task block, KV head), one thread per channel. A task's
// blocks are its (layer, group) or (layer, token) pairs, layer-major; a block finds its task by
// binary search over the tasks' first_block.

template <typename Task>
__device__ __forceinline__ int32_t TaskOf(const Task* tasks, int32_t num_tasks, int32_t block) {
  int32_t lo = 0, hi = num_tasks - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (tasks[mid].first_block <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// One G-token key group of one layer: from the task's source slots to its quantized tokens.
template <typename T>
__global__ void KeyTaskKernel(PoolLayout L, const KeyTask* tasks, int32_t num_tasks, const int32_t* page_ids,
                              int block_size) {
  extern __shared__ float smem[];
  const KeyTask task = tasks[TaskOf(tasks, num_tasks, blockIdx.x)];
  const int32_t local = blockIdx.x - task.first_block;
  const int32_t layer = local / task.num_groups, group = local % task.num_groups;
  const int h = blockIdx.y, c = threadIdx.x, D = L.head_dim, G = L.group_size, g = block_size;
  const int32_t src_first_slot = task.src_first_slot + group * G;
  const int32_t dst_first_token = task.dst_first_token + group * G;
  float* x = smem;                 // [G][D] compensated targets
  float* error = x + G * D;        // [G][g] error of the block just quantized
  float* comp = error + G * g;     // [g][D - g] C_i of the current block
  uint8_t* codes = reinterpret_cast<uint8_t*>(comp + g * (D - g));  // [G][D]
  const int spp = L.slots_per_page, tpp = L.tokens_per_page;
  const float max_code = static_cast<float>((1 << L.k_bits) - 1);

  for (int t = 0; t < G; ++t) {
    const int slot = src_first_slot + t;
    x[t * D + c] = ToFloat(SlotRow<T>(L, page_ids[task.src_pages + slot / spp], layer, 0, h, slot % spp)[c]);
  }
  const QuantPage dst = QuantPageAt(L, QuantLayerOffsets(L), page_ids[task.dst_pages + dst_first_token / tpp], layer);
  const int off = dst_first_token % tpp;
  const int64_t row = static_cast<int64_t>(h) * D + c;

  // This head's C_i start in the state pages.
  const int64_t floats_per_page = L.page_bytes / 4;
  int64_t comp_offset = SquatStateHeadOffset(layer, h, L.kv_heads, SquatStateFloatsPerHead(D, g));

  const int blocks = D / g;
  for (int b = 0; b < blocks; ++b) {
    const int start = b * g, rest = start + g;
    if (c >= start && c < rest) {
      float lo = x[c], hi = x[c];
      for (int t = 1; t < G; ++t) {
        lo = fminf(lo, x[t * D + c]);
        hi = fmaxf(hi, x[t * D + c]);
      }
      const __half scale_h = __float2half_rn(__fdiv_rn(__fsub_rn(hi, lo), max_code));
      const __half min_h = __float2half_rn(lo);
      const float s = __half2float(scale_h), m = __half2float(min_h);
      for (int t = 0; t < G; ++t) {
        const float v = x[t * D + c];
        float code = 0.f;
        if (s != 0.f) code = fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(v, m), s)), 0.f), max_code);
        codes[t * D + c] = static_cast<uint8_t>(code);
        error[t * g + (c - start)] = __fsub_rn(__fadd_rn(__fmul_rn(code, s), m), v);
      }
      const int64_t meta = row * (tpp / G) + off / G;
      dst.key_scale[meta] = scale_h;
      dst.key_min[meta] = min_h;
    }
    const bool compensate = task.state_pages >= 0 && b + 1 < blocks;
    const int cols = D - rest;
    if (compensate) {
      for (int e = c; e < g * cols; e += blockDim.x) {
        const int64_t f = comp_offset + e;
        const float* page = reinterpret_cast<const float*>(static_cast<const char*>(L.pool) +
                                                           static_cast<int64_t>(page_ids[task.state_pages + f / floats_per_page]) * L.page_bytes);
        comp[e] = page[f % floats_per_page];
      }
    }
    __syncthreads();
    if (compensate && c >= rest) {
      const int col = c - rest;
      for (int t = 0; t < G; ++t) {
        float sum = 0.f;
        for (int j = 0; j < g; ++j) sum = fmaf(error[t * g + j], comp[j * cols + col], sum);
        x[t * D + c] = __fadd_rn(x[t * D + c], sum);
      }
    }
    comp_offset += static_cast<int64_t>(g) * cols;
    __syncthreads();
  }
  const int fpi = 32 / L.k_bits;
  for (int w = 0; w < G / fpi; ++w) {
    uint32_t word = 0;
    for (int k = 0; k < fpi; ++k) word |= static_cast<uint32_t>(codes[(w * fpi + k) * D + c]) << (L.k_bits * k);
    dst.key_words[row * (tpp / fpi) + off / fpi + w] = word;
  }
}

size_t KeyTaskSmemBytes(const PoolLayout& L, int g) {
  const int G = L.group_size, D = L.head_dim;
  return (static_cast<size_t>(G) * D + G * g + g * (D - g)) * sizeof(float) + static_cast<size_t>(G) * D;
}

// One value token of one layer.
template <typename T>
__global__ void ValueTaskKernel(PoolLayout L, const ValueTask* tasks, int32_t num_tasks, const int32_t* page_ids) {
  extern __shared__ float smem[];
  const ValueTask task = tasks[TaskOf(tasks, num_tasks, blockIdx.x)];
  const int32_t local = blockIdx.x - task.first_block;
  const int32_t layer = local / task.num_tokens, t = local % task.num_tokens;
  const int32_t src_slot = task.ring > 0 ? (task.src_first_slot + t) % task.ring : task.src_first_slot + t;
  const int32_t dst_token = task.dst_first_token + t;
  const int h = blockIdx.y, c = threadIdx.x, D = L.head_dim, G = L.group_size;
  float* x = smem;              // [D]
  float* scale = x + D;         // [D / G]
  float* minimum = scale + D / G;
  uint8_t* codes = reinterpret_cast<uint8_t*>(minimum + D / G);  // [D]
  const int spp = L.slots_per_page, tpp = L.tokens_per_page;
  const float max_code = static_cast<float>((1 << L.v_bits) - 1);

  x[c] = ToFloat(SlotRow<T>(L, page_ids[task.src_pages + src_slot / spp], layer, 1, h, src_slot % spp)[c]);
  __syncthreads();
  const QuantPage dst = QuantPageAt(L, QuantLayerOffsets(L), page_ids[task.dst_pages + dst_token / tpp], layer);
  const int64_t row = static_cast<int64_t>(h) * tpp + dst_token % tpp;
  if (c % G == 0) {
    float lo = x[c], hi = x[c];
    for (int k = 1; k < G; ++k) {
      lo = fminf(lo, x[c + k]);
      hi = fmaxf(hi, x[c + k]);
    }
    const __half scale_h = __float2half_rn(__fdiv_rn(__fsub_rn(hi, lo), max_code));
    const __half min_h = __float2half_rn(lo);
    scale[c / G] = __half2float(scale_h);
    minimum[c / G] = __half2float(min_h);
    dst.value_scale[row * (D / G) + c / G] = scale_h;
    dst.value_min[row * (D / G) + c / G] = min_h;
  }
  __syncthreads();
  const float s = scale[c / G], m = minimum[c / G];
  float code = 0.f;
  if (s != 0.f) code = fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(x[c], m), s)), 0.f), max_code);
  codes[c] = static_cast<uint8_t>(code);
  __syncthreads();
  const int fpi = 32 / L.v_bits;
  if (c % fpi == 0) {
    uint32_t word = 0;
    for (int k = 0; k < fpi; ++k) word |= static_cast<uint32_t>(codes[c + k]) << (L.v_bits * k);
    dst.value_words[row * (D / fpi) + c / fpi] = word;
  }
}

// ---------------------------------------------------------------------------------------------
// Slot rows: one block per (entry, KV head), 16-byte vectors.

template <typename T>
__global__ void StoreSlotRowsKernel(PoolLayout L, int32_t layer, const int32_t* slots, const T* k,
                                    int64_t k_row_stride, const T* v, int64_t v_row_stride) {
  const int32_t h = blockIdx.y;
  const int32_t r = slots[3 * blockIdx.x], page = slots[3 * blockIdx.x + 1], slot = slots[3 * blockIdx.x + 2];
  const int vecs = L.head_dim * static_cast<int>(sizeof(T)) / 16;
  const uint4* k_src = reinterpret_cast<const uint4*>(k + r * k_row_stride + static_cast<int64_t>(h) * L.head_dim);
  const uint4* v_src = reinterpret_cast<const uint4*>(v + r * v_row_stride + static_cast<int64_t>(h) * L.head_dim);
  uint4* k_dst = reinterpret_cast<uint4*>(SlotRow<T>(L, page, layer, 0, h, slot));
  uint4* v_dst = reinterpret_cast<uint4*>(SlotRow<T>(L, page, layer, 1, h, slot));
  for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

template <typename T>
struct KeyTaskLauncher {
  static cudaError_t Run(const PoolLayout& L, const KeyTask* tasks, int32_t n, int32_t blocks, const int32_t* ids,
                         int g, cudaStream_t s) {
    const size_t smem = KeyTaskSmemBytes(L, g);
    if (cudaError_t e = AllowSmem(KeyTaskKernel<T>, smem); e != cudaSuccess) return e;
    KeyTaskKernel<T><<<dim3(blocks, L.kv_heads), L.head_dim, smem, s>>>(L, tasks, n, ids, g);
    return cudaGetLastError();
  }
};
template <typename T>
struct ValueTaskLauncher {
  static cudaError_t Run(const PoolLayout& L, const ValueTask* tasks, int32_t n, int32_t blocks, const int32_t* ids,
                         cudaStream_t s) {
    const size_t smem = (L.head_dim + 2 * (L.head_dim / L.group_size)) * sizeof(float) + L.head_dim;
    ValueTaskKernel<T><<<dim3(blocks, L.kv_heads), L.head_dim, smem, s>>>(L, tasks, n, ids);
    return cudaGetLastError();
  }
};
template <typename T>
struct StoreLauncher {
  static cudaError_t Run(const PoolLayout& L, int32_t layer, const int32_t* slots, int32_t rows, const void* k,
                         int64_t k_stride, const void* v, int64_t v_stride, cudaStream_t s) {
    StoreSlotRowsKernel<T><<<dim3(rows, L.kv_heads), 32, 0, s>>>(L, layer, slots, static_cast<const T*>(k), k_stride,
                                                                 static_cast<const T*>(v), v_stride);
    return cudaGetLastError();
  }
};

}  // namespace

int QuantizeKeyTasks(const PoolLayout& layout, const KeyTask* tasks, int32_t num_tasks, int32_t total_blocks,
                     const int32_t* page_ids, int32_t block_size, void* stream) {
  if (num_tasks == 0 || total_blocks == 0) return cudaSuccess;
  if (!LayoutSupported(layout, true) || block_size <= 0 || layout.head_dim % block_size != 0) return cudaErrorInvalidValue;
  return ByDType<KeyTaskLauncher>(layout.dtype, layout, tasks, num_tasks, total_blocks, page_ids, block_size,
                                  static_cast<cudaStream_t>(stream));
}

int QuantizeValueTasks(const PoolLayout& layout, const ValueTask* tasks, int32_t num_tasks, int32_t total_blocks,
                       const int32_t* page_ids, void* stream) {
  if (num_tasks == 0 || total_blocks == 0) return cudaSuccess;
  if (!LayoutSupported(layout, true)) return cudaErrorInvalidValue;
  return ByDType<ValueTaskLauncher>(layout.dtype, layout, tasks, num_tasks, total_blocks, page_ids,
                                    static_cast<cudaStream_t>(stream));
}

int StoreSlotRows(const PoolLayout& layout, int32_t layer, const int32_t* slots, int32_t num_entries, const void* k,
                  int64_t k_row_stride, const void* v, int64_t v_row_stride, void* stream) {
  if (num_entries == 0) return cudaSuccess;
  if (!LayoutSupported(layout, false) || layer < 0 || layer >= layout.num_layers) return cudaErrorInvalidValue;
  const int64_t align = 16 / DTypeBytes(layout.dtype);  // rows are copied as 16-byte vectors
  if (reinterpret_cast<uintptr_t>(k) % 16 != 0 || reinterpret_cast<uintptr_t>(v) % 16 != 0 ||
      k_row_stride % align != 0 || v_row_stride % align != 0) {
    return cudaErrorInvalidValue;
  }
  return ByDType<StoreLauncher>(layout.dtype, layout, layer, slots, num_entries, k, k_row_stride, v, v_row_stride,
                                static_cast<cudaStream_t>(stream));
}

}  // namespace squat::kernels
