#include "runtime/tokenizer/normalizers.h"

#include <utility>
#include <vector>

#include "runtime/tokenizer/nfc.h"
#include "runtime/tokenizer/pattern.h"
#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string Normalize(std::string text) const override {
    for (const auto& step : steps_) text = step->Normalize(std::move(text));
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string Normalize(std::string text) const override {
    // HF leaves an empty string empty, so that e.g. "<s>" alone does not grow a "▁".
    return text.empty() ? text : prefix_ + text;
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string Normalize(std::string text) const override {
    return pattern_.ReplaceAll(text, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string Normalize(std::string text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        Utf8Char c = DecodeUtf8(text, begin);
        if (!IsUnicodeWhitespace(c.code_point)) break;
        begin += c.length;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, start).code_point)) break;
        end = start;
      }
    }
    return text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class NfcNormalizer : public Normalizer {
 public:
  std::string Normalize(std::string text) const override { return ToNfc(text); }
};

class NfdNormalizer : public Normalizer {
 public:
  std::string Normalize(std::string text) const override { return ToNfd(text); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& spec) {
  if (spec.is_null()) return nullptr;
  auto type = TypeOf(spec, "normalizer");
  if (!type.ok()) return type.status();
  const std::string where = "normalizer " + *type;

  if (*type == "Sequence") {
    const Json* list = OptionalField(spec, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return SpecError(where, "'normalizers' must be a list");
    }
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const Json& item : *list) {
      auto step = ParseNormalizer(item);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(*std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (*type == "Prepend") {
    auto prefix = StringField(spec, "prepend", where);
    if (!prefix.ok()) return prefix.status();
    return std::make_unique<PrependNormalizer>(*std::move(prefix));
  }
  if (*type == "Replace") {
    auto pattern = Pattern::FromJson(OptionalField(spec, "pattern"), where);
    if (!pattern.ok()) return pattern.status();
    auto content = StringField(spec, "content", where);
    if (!content.ok()) return content.status();
    return std::make_unique<ReplaceNormalizer>(*std::move(pattern), *std::move(content));
  }
  if (*type == "Strip") {
    auto left = BoolField(spec, "strip_left", true, where);
    if (!left.ok()) return left.status();
    auto right = BoolField(spec, "strip_right", true, where);
    if (!right.ok()) return right.status();
    return std::make_unique<StripNormalizer>(*left, *right);
  }
  if (*type == "NFC") return std::make_unique<NfcNormalizer>();
  if (*type == "NFD") return std::make_unique<NfdNormalizer>();
  return SpecError("normalizer", "unsupported type '" + *type + "'");
}

}  // namespace squat::tokenizer_internal
