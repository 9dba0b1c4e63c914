// The CUDA runtime calls the host code needs (cuda_runtime.h), so that it includes no CUDA header.
#include "kernels/cuda_runtime.h"

#include <cuda_runtime.h>

namespace squat::kernels {

const char* ErrorString(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

int MemoryInfo(int device, size_t* free_bytes, size_t* total_bytes) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return e;
  return cudaMemGetInfo(free_bytes, total_bytes);
}

void* AllocDevice(size_t bytes) {
  void* ptr = nullptr;
  return cudaMalloc(&ptr, bytes) == cudaSuccess ? ptr : nullptr;
}
void FreeDevice(void* ptr) {
  if (ptr) cudaFree(ptr);
}
int CopyToDevice(void* dst, const void* src, size_t bytes, void* stream) {
  return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream));
}
int CopyToHost(void* dst, const void* src, size_t bytes, void* stream) {
  return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream));
}
int StreamSynchronize(void* stream) { return cudaStreamSynchronize(static_cast<cudaStream_t>(stream)); }
void* EventCreate() {
  cudaEvent_t event = nullptr;
  return cudaEventCreateWithFlags(&event, cudaEventDisableTiming) == cudaSuccess ? event : nullptr;
}
void EventDestroy(void* event) {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
int EventRecord(void* event, void* stream) {
  return cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream));
}
int EventSynchronize(void* event) { return cudaEventSynchronize(static_cast<cudaEvent_t>(event)); }

}  // namespace squat::kernels
