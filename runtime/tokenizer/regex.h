// A compiled PCRE2 pattern (UTF + UCP, JIT when available) standing in for the Oniguruma regexes
// of HF tokenizer.json files (private to squat_tokenizer).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace squat::tokenizer_internal {

using ByteRange = std::pair<size_t, size_t>;  // [begin, end) byte offsets

class Regex {
 public:
  // `what` names the pattern's owner in the error message.
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(std::string_view pattern,
                                                              std::string_view what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping, non-empty matches from left to right. `text` must be valid UTF-8.
  // Thread-safe.
  std::vector<ByteRange> FindAll(std::string_view text) const;
  // Whether the pattern matches the whole of `text` (valid UTF-8).
  bool MatchesWhole(std::string_view text) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  // match_data: a pcre2_match_data_8* made for this pattern.
  bool MatchAt(std::string_view text, size_t offset, uint32_t options, void* match_data,
               ByteRange* match) const;

  void* code_;  // pcre2_code_8*, kept opaque so that this header needs no PCRE2 macros
};

// Byte ranges of every occurrence of a literal string (non-overlapping, left to right).
std::vector<ByteRange> FindAllLiteral(std::string_view text, std::string_view literal);

}  // namespace squat::tokenizer_internal
