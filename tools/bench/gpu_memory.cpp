#include "tools/bench/gpu_memory.h"

#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace squat::bench {
namespace {

// stdout of a shell command, or nothing when it fails.
bool Capture(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return false;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out->append(buffer, n);
  return pclose(pipe) == 0;
}

std::vector<int64_t> Numbers(absl::string_view line) {
  std::vector<int64_t> values;
  for (absl::string_view field : absl::StrSplit(line, ',')) {
    int64_t v;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(field), &v)) values.push_back(v);
  }
  return values;
}

}  // namespace

GpuMemorySample QueryGpuMemory(const std::string& device) {
  GpuMemorySample sample;
  if (device.rfind("cuda", 0) != 0) return sample;
  int index = 0;
  if (const size_t colon = device.find(':'); colon != std::string::npos) {
    if (!absl::SimpleAtoi(device.substr(colon + 1), &index)) index = 0;
  }
  const std::string select = absl::StrCat(" -i ", index);
  std::string card;
  if (!Capture(absl::StrCat("nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits",
                            select, " 2>/dev/null"),
               &card)) {
    return sample;
  }
  const std::vector<int64_t> used_total = Numbers(card);
  if (used_total.size() < 2) return sample;
  sample.available = true;
  sample.used_mib = used_total[0];
  sample.total_mib = used_total[1];
  std::string apps;
  if (Capture(absl::StrCat("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits",
                           select, " 2>/dev/null"),
              &apps)) {
    const int64_t self = getpid();
    for (absl::string_view line : absl::StrSplit(apps, '\n', absl::SkipWhitespace())) {
      const std::vector<int64_t> pid_used = Numbers(line);
      if (pid_used.size() < 2) continue;
      ++sample.compute_apps;
      if (pid_used[0] == self) sample.process_mib = pid_used[1];
    }
  }
  return sample;
}

}  // namespace squat::bench
