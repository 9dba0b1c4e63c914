// Free and total memory of a CUDA device, for sizing the KV pool from a utilization share
// (--gpu-memory-utilization). Internal to kvcache/ and runtime/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace squat::kv {

struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

// UNAVAILABLE when the device is not CUDA or the build has no CUDA kernels.
absl::StatusOr<DeviceMemory> QueryDeviceMemory(at::Device device);

// The KV pool a CUDA device can give: utilization * total minus what is already in use
// (weights, CUDA context) minus the workspace still to come; may be <= 0.
int64_t KvPoolBytesFor(const DeviceMemory& memory, double utilization, int64_t workspace_bytes);

}  // namespace squat::kv
