// The {"String": ...} / {"Regex": ...} pattern of Replace and Split steps (private to squat_tokenizer).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/tokenizer/json.h"
#include "runtime/tokenizer/regex.h"

namespace squat::tokenizer_internal {

class Pattern {
 public:
  static absl::StatusOr<Pattern> FromJson(const Json* spec, std::string_view where) {
    Pattern pattern;
    if (spec != nullptr && spec->is_object() && spec->contains("String") &&
        (*spec)["String"].is_string()) {
      pattern.literal_ = (*spec)["String"].get<std::string>();
      return pattern;
    }
    if (spec != nullptr && spec->is_object() && spec->contains("Regex") &&
        (*spec)["Regex"].is_string()) {
      auto regex = Regex::Compile((*spec)["Regex"].get<std::string>(), where);
      if (!regex.ok()) return regex.status();
      pattern.regex_ = *std::move(regex);
      return pattern;
    }
    return SpecError(where, "'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
  }

  static Pattern Literal(std::string text) {
    Pattern pattern;
    pattern.literal_ = std::move(text);
    return pattern;
  }

  // Non-overlapping, non-empty matches, left to right.
  std::vector<ByteRange> FindAll(std::string_view text) const {
    return regex_ ? regex_->FindAll(text) : FindAllLiteral(text, literal_);
  }

  std::string ReplaceAll(std::string_view text, std::string_view content) const {
    std::string out;
    size_t done = 0;
    for (const ByteRange& match : FindAll(text)) {
      out.append(text.substr(done, match.first - done));
      out.append(content);
      done = match.second;
    }
    out.append(text.substr(done));
    return out;
  }

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

}  // namespace squat::tokenizer_internal
