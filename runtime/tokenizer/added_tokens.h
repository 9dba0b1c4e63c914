// tokenizer.json "added_tokens": found in the text before normalization / BPE and never split
// (private to squat_tokenizer).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer/json.h"
#include "runtime/tokenizer/regex.h"

namespace squat::tokenizer_internal {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const Json& list);

// Splits text on occurrences of a set of added tokens the way HF's AddedVocabulary does:
// leftmost-longest matches, with lstrip / rstrip absorbing neighbouring whitespace and
// single_word rejecting matches inside a word.
class AddedTokenMatcher {
 public:
  struct Pattern {
    std::string text;  // what is looked for (the content, normalized for normalized tokens)
    const AddedToken* token;
  };
  explicit AddedTokenMatcher(std::vector<Pattern> patterns);

  struct Segment {
    size_t begin, end;  // byte range in the text
    int32_t id;         // the added token's id, or -1 for ordinary text
  };
  // Covers the whole text, in order; ordinary segments are never empty.
  std::vector<Segment> Split(std::string_view text) const;
  bool empty() const { return patterns_.empty(); }

 private:
  // Index into patterns_ of the longest pattern at text[pos], or -1.
  int LongestAt(std::string_view text, size_t pos) const;
  bool IsWordChar(std::string_view text, size_t char_begin) const;
  bool EndsWithWordChar(std::string_view text) const;

  std::vector<Pattern> patterns_;
  std::array<std::vector<int>, 256> by_first_byte_;  // longest first
  std::shared_ptr<const Regex> word_char_;           // only when a token is single_word
};

}  // namespace squat::tokenizer_internal
