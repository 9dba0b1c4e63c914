// GPU memory as nvidia-smi sees it (this process's share and the whole card), so that the
// benchmark tools need no CUDA headers. Empty results where nvidia-smi is missing.
#pragma once

#include <cstdint>
#include <string>

namespace squat::bench {

struct GpuMemorySample {
  bool available = false;     // nvidia-smi answered
  int64_t process_mib = -1;   // this pid's used_memory; -1 when not listed (e.g. another pid namespace)
  int64_t used_mib = -1;      // the whole card
  int64_t total_mib = -1;
  int32_t compute_apps = 0;   // processes listed on the card
};

// device: "cuda" or "cuda:N" (N = nvidia-smi's index); anything else returns an empty sample.
GpuMemorySample QueryGpuMemory(const std::string& device);

}  // namespace squat::bench
