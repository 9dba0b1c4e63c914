// The few CUDA runtime calls host code needs (errors, devices, copies, events), so that callers
// include no CUDA header.
#pragma once

#include <cstddef>
#include <cstdint>

namespace squat::kernels {

const char* ErrorString(int error);
int DeviceCount();  // 0 when there is no device or driver
// Free and total memory of `device` (makes it this thread's current device for these kernels).
int MemoryInfo(int device, size_t* free_bytes, size_t* total_bytes);
void* AllocDevice(size_t bytes);  // nullptr on failure
void FreeDevice(void* ptr);
int CopyToDevice(void* dst, const void* src, size_t bytes, void* stream);  // async
int CopyToHost(void* dst, const void* src, size_t bytes, void* stream);    // async
int StreamSynchronize(void* stream);
// An event that orders reuse of a pinned staging buffer after the copy that read it.
void* EventCreate();
void EventDestroy(void* event);
int EventRecord(void* event, void* stream);
int EventSynchronize(void* event);

}  // namespace squat::kernels
