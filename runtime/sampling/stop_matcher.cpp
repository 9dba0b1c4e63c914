#include "runtime/sampling/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace squat {

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string StopMatcher::Append(const std::string& delta) {
  if (stopped_) return {};
  pending_ += delta;
  if (stops_.empty()) return std::exchange(pending_, {});

  // The stop string that completes first wins (then the longer one), so that the result does
  // not depend on how the text was split into deltas.
  size_t first = std::string::npos;
  size_t first_end = std::string::npos;
  for (const auto& stop : stops_) {
    const size_t pos = pending_.find(stop);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stop.size();
    if (end < first_end || (end == first_end && pos < first)) {
      first = pos;
      first_end = end;
    }
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& stop : stops_) {
    const size_t max_len = std::min(stop.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() { return stopped_ ? std::string() : std::exchange(pending_, {}); }

}  // namespace squat
