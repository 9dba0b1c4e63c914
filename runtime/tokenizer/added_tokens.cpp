#include "runtime/tokenizer/added_tokens.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const Json& list) {
  std::vector<AddedToken> tokens;
  if (list.is_null()) return tokens;
  if (!list.is_array()) return SpecError("added_tokens", "must be a list");
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& entry = list[i];
    const std::string where = absl::StrCat("added_tokens[", i, "]");
    AddedToken token;
    const Json* id = OptionalField(entry, "id");
    if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > INT32_MAX) {
      return SpecError(where, "'id' must be a non-negative integer");
    }
    token.id = id->get<int32_t>();
    auto content = StringField(entry, "content", where);
    if (!content.ok()) return content.status();
    token.content = *std::move(content);
    auto special = BoolField(entry, "special", false, where);
    if (!special.ok()) return special.status();
    token.special = *special;
    for (auto [key, flag, fallback] :
         {std::tuple{"single_word", &token.single_word, false},
          std::tuple{"lstrip", &token.lstrip, false}, std::tuple{"rstrip", &token.rstrip, false},
          std::tuple{"normalized", &token.normalized, !token.special}}) {
      auto value = BoolField(entry, key, fallback, where);
      if (!value.ok()) return value.status();
      *flag = *value;
    }
    tokens.push_back(std::move(token));
  }
  return tokens;
}

AddedTokenMatcher::AddedTokenMatcher(std::vector<Pattern> patterns) {
  for (Pattern& p : patterns) {
    if (!p.text.empty()) patterns_.push_back(std::move(p));
  }
  bool any_single_word = false;
  for (int i = 0; i < static_cast<int>(patterns_.size()); ++i) {
    by_first_byte_[static_cast<uint8_t>(patterns_[i].text[0])].push_back(i);
    any_single_word |= patterns_[i].token->single_word;
  }
  for (auto& candidates : by_first_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
      return patterns_[a].text.size() > patterns_[b].text.size();
    });
  }
  if (any_single_word) {
    // \w as HF's (Rust regex) single_word check uses it; the pattern is fixed, so it compiles.
    word_char_ = *Regex::Compile(R"(\w)", "single_word");
  }
}

int AddedTokenMatcher::LongestAt(std::string_view text, size_t pos) const {
  for (int i : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
    const std::string& p = patterns_[i].text;
    if (text.compare(pos, p.size(), p) == 0) return i;
  }
  return -1;
}

bool AddedTokenMatcher::IsWordChar(std::string_view text, size_t char_begin) const {
  size_t length = DecodeUtf8(text, char_begin).length;
  return word_char_->MatchesWhole(text.substr(char_begin, length));
}

bool AddedTokenMatcher::EndsWithWordChar(std::string_view text) const {
  if (text.empty()) return false;
  size_t begin = text.size() - 1;
  while (begin > 0 && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) --begin;
  return IsWordChar(text, begin);
}

std::vector<AddedTokenMatcher::Segment> AddedTokenMatcher::Split(std::string_view text) const {
  std::vector<Segment> segments;
  size_t done = 0;  // end of the last emitted segment
  size_t pos = 0;
  while (pos < text.size()) {
    int index = LongestAt(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = *patterns_[index].token;
    size_t start = pos;
    size_t stop = pos + patterns_[index].text.size();
    pos = stop;  // a rejected match still consumes its text, as in HF's match iterator
    if (token.single_word) {
      bool word_before = start > 0 && EndsWithWordChar(text.substr(0, start));
      bool word_after = stop < text.size() && IsWordChar(text, stop);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > done) {
        size_t prev = new_start - 1;
        while (prev > done && (static_cast<uint8_t>(text[prev]) & 0xC0) == 0x80) --prev;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, prev).code_point)) break;
        new_start = prev;
      }
      start = new_start;
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        Utf8Char c = DecodeUtf8(text, stop);
        if (!IsUnicodeWhitespace(c.code_point)) break;
        stop += c.length;
      }
      pos = stop;
    }
    if (start > done) segments.push_back({done, start, -1});
    segments.push_back({start, stop, token.id});
    done = stop;
  }
  if (done < text.size()) segments.push_back({done, text.size(), -1});
  return segments;
}

}  // namespace squat::tokenizer_internal
