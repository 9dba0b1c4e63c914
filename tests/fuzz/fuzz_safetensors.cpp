// SafetensorsFile::Open on arbitrary file contents (through a memfd, so that the real
// open/fstat/mmap path runs). Checks: every tensor it accepts lies inside the file, holds
// exactly shape x dtype bytes, and does not overlap another; reading all of them is safe.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/checkpoint/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(size == 0 || write(fd, data, size) == static_cast<ssize_t>(size));
  auto file = squat::SafetensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
  close(fd);
  if (!file.ok()) {
    FUZZ_CHECK(!file.status().message().empty());
    return 0;
  }
  std::vector<std::pair<const unsigned char*, const unsigned char*>> ranges;
  unsigned checksum = 0;
  for (const std::string& name : (*file)->Names()) {
    const squat::TensorView* view = (*file)->Find(name);
    FUZZ_CHECK(view != nullptr);
    uint64_t expected = squat::DTypeSize(view->dtype);
    for (int64_t dim : view->shape) {
      FUZZ_CHECK(dim >= 0);
      expected *= static_cast<uint64_t>(dim);
    }
    FUZZ_CHECK(view->nbytes == expected);
    FUZZ_CHECK(view->nbytes <= size);
    const auto* begin = static_cast<const unsigned char*>(view->data);
    if (view->nbytes > 0) ranges.emplace_back(begin, begin + view->nbytes);
    // Touch every byte: a view past the mapping faults here.
    for (size_t i = 0; i < view->nbytes; ++i) checksum += begin[i];
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second);
  // The data region follows the 8-byte length and the header, so it is at most size - 8.
  uint64_t total = 0;
  for (const auto& [begin, end] : ranges) total += static_cast<uint64_t>(end - begin);
  FUZZ_CHECK(total + 8 <= size || ranges.empty());
  volatile unsigned sink = checksum;
  (void)sink;
  return 0;
}
