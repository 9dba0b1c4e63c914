// Finds stop strings in generated text while streaming, holding back only the text that
// could still turn into a stop string.
#pragma once

#include <string>
#include <vector>

namespace squat {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stop_strings);

  // Appends newly decoded text. Returns the text that is now safe to emit. When a stop
  // string appears, `stopped()` becomes true and the returned text ends right before it.
  std::string Append(const std::string& delta);
  // The held-back tail, for the end of a generation that did not stop on a string.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // decoded but not yet emitted
  bool stopped_ = false;
};

}  // namespace squat
