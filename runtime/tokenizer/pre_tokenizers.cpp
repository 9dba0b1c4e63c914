#include "runtime/tokenizer/pre_tokenizers.h"

#include <algorithm>
#include <utility>

#include "runtime/tokenizer/pattern.h"
#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

// HF's SplitDelimiterBehavior.
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Region {
  ByteRange range;
  bool is_delimiter;
};

// Cuts [0, size) into alternating delimiter / non-delimiter regions, then groups them the way
// HF's NormalizedString::split does for each behavior.
std::vector<ByteRange> SplitRanges(size_t size, const std::vector<ByteRange>& matches,
                                   Behavior behavior, bool invert) {
  std::vector<Region> regions;
  size_t done = 0;
  for (const ByteRange& match : matches) {
    if (match.first > done) regions.push_back({{done, match.first}, invert});
    regions.push_back({match, !invert});
    done = match.second;
  }
  if (done < size) regions.push_back({{done, size}, invert});

  std::vector<ByteRange> pieces;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Region& r : regions) {
        if (!r.is_delimiter) pieces.push_back(r.range);
      }
      break;
    case Behavior::kIsolated:
      for (const Region& r : regions) pieces.push_back(r.range);
      break;
    case Behavior::kMergedWithPrevious: {
      bool previous_was_delimiter = false;
      for (const Region& r : regions) {
        if (r.is_delimiter && !previous_was_delimiter && !pieces.empty()) {
          pieces.back().second = r.range.second;
        } else {
          pieces.push_back(r.range);
        }
        previous_was_delimiter = r.is_delimiter;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool next_was_delimiter = false;  // walking right to left
      for (auto it = regions.rbegin(); it != regions.rend(); ++it) {
        if (it->is_delimiter && !next_was_delimiter && !pieces.empty()) {
          pieces.back().first = it->range.first;
        } else {
          pieces.push_back(it->range);
        }
        next_was_delimiter = it->is_delimiter;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case Behavior::kContiguous: {
      bool previous_was_delimiter = false;
      for (const Region& r : regions) {
        if (r.is_delimiter == previous_was_delimiter && !pieces.empty()) {
          pieces.back().second = r.range.second;
        } else {
          pieces.push_back(r.range);
        }
        previous_was_delimiter = r.is_delimiter;
      }
      break;
    }
  }
  return pieces;
}

// Applies `split_one` to every piece and keeps the non-empty results in order.
template <typename Fn>
void SplitEach(std::vector<PreToken>& pieces, Fn split_one) {
  std::vector<PreToken> out;
  out.reserve(pieces.size());
  for (PreToken& piece : pieces) {
    for (PreToken& sub : split_one(std::move(piece))) {
      if (!sub.text.empty()) out.push_back(std::move(sub));
    }
  }
  pieces = std::move(out);
}

std::vector<PreToken> CutPiece(const PreToken& piece, const std::vector<ByteRange>& ranges) {
  std::vector<PreToken> out;
  out.reserve(ranges.size());
  for (const ByteRange& r : ranges) {
    out.push_back({piece.text.substr(r.first, r.second - r.first),
                   piece.at_input_start && r.first == 0});
  }
  return out;
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Split(std::vector<PreToken>& pieces) const override {
    for (const auto& step : steps_) step->Split(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class PatternSplitPreTokenizer : public PreTokenizer {
 public:
  PatternSplitPreTokenizer(Pattern pattern, Behavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void Split(std::vector<PreToken>& pieces) const override {
    SplitEach(pieces, [&](PreToken piece) {
      return CutPiece(piece, SplitRanges(piece.text.size(), pattern_.FindAll(piece.text),
                                         behavior_, invert_));
    });
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void Split(std::vector<PreToken>& pieces) const override {
    SplitEach(pieces, [&](PreToken piece) {
      if (add_prefix_space_ && piece.text.front() != ' ') piece.text.insert(0, " ");
      std::vector<PreToken> subs;
      if (regex_) {
        subs = CutPiece(piece, SplitRanges(piece.text.size(), regex_->FindAll(piece.text),
                                           Behavior::kIsolated, false));
      } else {
        subs.push_back(std::move(piece));
      }
      for (PreToken& sub : subs) sub.text = MapBytes(sub.text);
      return subs;
    });
  }

 private:
  static std::string MapBytes(std::string_view text) {
    std::string out;
    out.reserve(text.size() * 2);
    for (char c : text) out.append(ByteToUnicode(static_cast<uint8_t>(c)));
    return out;
  }

  bool add_prefix_space_;
  std::shared_ptr<const Regex> regex_;  // null when use_regex is false
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void Split(std::vector<PreToken>& pieces) const override {
    SplitEach(pieces, [&](PreToken piece) {
      std::string text;
      text.reserve(piece.text.size() + replacement_.size());
      for (char c : piece.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      bool prepend = scheme_ == PrependScheme::kAlways ||
                     (scheme_ == PrependScheme::kFirst && piece.at_input_start);
      if (prepend && text.compare(0, replacement_.size(), replacement_) != 0) {
        text.insert(0, replacement_);
      }
      piece.text = std::move(text);
      if (!split_) return std::vector<PreToken>{std::move(piece)};
      return CutPiece(piece, SplitRanges(piece.text.size(),
                                         FindAllLiteral(piece.text, replacement_),
                                         Behavior::kMergedWithNext, false));
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

absl::StatusOr<Behavior> ParseBehavior(const Json& spec, std::string_view where) {
  auto name = StringField(spec, "behavior", where);
  if (!name.ok()) return name.status();
  if (*name == "Removed") return Behavior::kRemoved;
  if (*name == "Isolated") return Behavior::kIsolated;
  if (*name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (*name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (*name == "Contiguous") return Behavior::kContiguous;
  return SpecError(where, "unknown behavior '" + *name + "'");
}

}  // namespace

absl::StatusOr<PrependScheme> ParsePrependScheme(const Json& spec, std::string_view where) {
  if (OptionalField(spec, "prepend_scheme") == nullptr) {
    auto add_prefix_space = BoolField(spec, "add_prefix_space", true, where);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    return *add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  auto name = StringField(spec, "prepend_scheme", where);
  if (!name.ok()) return name.status();
  if (*name == "always") return PrependScheme::kAlways;
  if (*name == "first") return PrependScheme::kFirst;
  if (*name == "never") return PrependScheme::kNever;
  return SpecError(where, "unknown prepend_scheme '" + *name + "'");
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& spec) {
  if (spec.is_null()) return nullptr;
  auto type = TypeOf(spec, "pre_tokenizer");
  if (!type.ok()) return type.status();
  const std::string where = "pre_tokenizer " + *type;

  if (*type == "Sequence") {
    const Json* list = OptionalField(spec, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return SpecError(where, "'pretokenizers' must be a list");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& item : *list) {
      auto step = ParsePreTokenizer(item);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(*std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (*type == "Split") {
    auto pattern = Pattern::FromJson(OptionalField(spec, "pattern"), where);
    if (!pattern.ok()) return pattern.status();
    auto behavior = ParseBehavior(spec, where);
    if (!behavior.ok()) return behavior.status();
    auto invert = BoolField(spec, "invert", false, where);
    if (!invert.ok()) return invert.status();
    return std::make_unique<PatternSplitPreTokenizer>(*std::move(pattern), *behavior, *invert);
  }
  if (*type == "ByteLevel") {
    auto add_prefix_space = BoolField(spec, "add_prefix_space", true, where);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    auto use_regex = BoolField(spec, "use_regex", true, where);
    if (!use_regex.ok()) return use_regex.status();
    std::shared_ptr<const Regex> regex;
    if (*use_regex) {
      auto compiled = Regex::Compile(kGpt2Pattern, where);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(*add_prefix_space, std::move(regex));
  }
  if (*type == "Metaspace") {
    auto replacement = StringField(spec, "replacement", where);
    if (!replacement.ok()) return replacement.status();
    auto scheme = ParsePrependScheme(spec, where);
    if (!scheme.ok()) return scheme.status();
    auto split = BoolField(spec, "split", true, where);
    if (!split.ok()) return split.status();
    return std::make_unique<MetaspacePreTokenizer>(*std::move(replacement), *scheme, *split);
  }
  return SpecError("pre_tokenizer", "unsupported type '" + *type + "'");
}

}  // namespace squat::tokenizer_internal
