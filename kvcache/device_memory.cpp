#include "kvcache/device_memory.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/cuda_runtime.h"
#endif

namespace squat::kv {

absl::StatusOr<DeviceMemory> QueryDeviceMemory(at::Device device) {
  if (!device.is_cuda()) return absl::UnavailableError("device memory: not a CUDA device");
#ifdef SQUAT_HAVE_CUDA_KERNELS
  size_t free_bytes = 0, total_bytes = 0;
  const int index = device.has_index() ? device.index() : 0;
  if (int e = kernels::MemoryInfo(index, &free_bytes, &total_bytes); e != 0) {
    return absl::InternalError(absl::StrCat("cudaMemGetInfo on ", device.str(), ": ", kernels::ErrorString(e)));
  }
  return DeviceMemory{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
#else
  return absl::UnavailableError("device memory: built without the CUDA kernels");
#endif
}

int64_t KvPoolBytesFor(const DeviceMemory& memory, double utilization, int64_t workspace_bytes) {
  const int64_t budget = static_cast<int64_t>(utilization * static_cast<double>(memory.total_bytes));
  const int64_t in_use = memory.total_bytes - memory.free_bytes;
  return budget - in_use - workspace_bytes;
}

}  // namespace squat::kv
