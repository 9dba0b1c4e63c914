// Device helpers shared by the kernels' translation units (decode_attention.cu, page_writes.cu):
// dtype conversion, slot and quantized-page addressing over kernels/page_layout.h, warp
// reductions, and the dtype dispatch of a launcher. Internal to kernels/; nvcc only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/page_layout.h"

namespace squat::kernels {

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Channel 0 of (layer, part, head, slot) in a full-precision slot page.
template <typename T>
__device__ __forceinline__ T* SlotRow(const PoolLayout& L, int32_t page, int32_t layer, int part, int32_t head,
                                      int32_t slot) {
  const int64_t element = SlotElement(L.kv_heads, L.slots_per_page, L.head_dim, layer, part, head, slot);
  return reinterpret_cast<T*>(static_cast<char*>(L.pool) + static_cast<int64_t>(page) * L.page_bytes) + element;
}

// One layer's blocks in a quantized page.
struct QuantPage {
  uint32_t* key_words;
  uint32_t* value_words;
  __half* key_scale;
  __half* key_min;
  __half* value_scale;
  __half* value_min;
};

__device__ __forceinline__ QuantPage QuantPageAt(const PoolLayout& L, const QuantOffsets& o, int32_t page,
                                                 int32_t layer) {
  char* base = static_cast<char*>(L.pool) + static_cast<int64_t>(page) * L.page_bytes + layer * o.layer_bytes;
  QuantPage q;
  q.key_words = reinterpret_cast<uint32_t*>(base + o.key_words);
  q.value_words = reinterpret_cast<uint32_t*>(base + o.value_words);
  q.key_scale = reinterpret_cast<__half*>(base + o.key_scale);
  q.key_min = reinterpret_cast<__half*>(base + o.key_min);
  q.value_scale = reinterpret_cast<__half*>(base + o.value_scale);
  q.value_min = reinterpret_cast<__half*>(base + o.value_min);
  return q;
}

__device__ __forceinline__ float WarpMax(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float WarpSum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <template <typename> class Launcher, typename... Args>
cudaError_t ByDType(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kFloat32: return Launcher<float>::Run(args...);
    case DType::kFloat16: return Launcher<__half>::Run(args...);
    case DType::kBFloat16: return Launcher<__nv_bfloat16>::Run(args...);
  }
  return cudaErrorInvalidValue;
}

// Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace squat::kernels
