#include "runtime/tokenizer/decoders.h"

#include <utility>

#include "runtime/tokenizer/pattern.h"
#include "runtime/tokenizer/pre_tokenizers.h"
#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->DecodeChain(tokens);
  }
  bool MayChangeAfter(const std::string& token) const override {
    // Conservative: a ByteFallback anywhere in the chain may regroup the run (it only delays).
    for (const auto& step : steps_) {
      if (step->MayChangeAfter(token)) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = pattern_.ReplaceAll(token, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Consecutive <0xXX> tokens become their bytes when those form valid UTF-8, else one U+FFFD
// per byte (what HF does).
class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending_bytes;
    size_t pending_count = 0;
    auto flush = [&] {
      if (pending_count == 0) return;
      if (IsValidUtf8(pending_bytes)) {
        out.push_back(std::move(pending_bytes));
      } else {
        for (size_t i = 0; i < pending_count; ++i) out.emplace_back(kReplacementUtf8);
      }
      pending_bytes.clear();
      pending_count = 0;
    };
    for (std::string& token : tokens) {
      int byte = ByteFallbackValue(token);
      if (byte >= 0) {
        pending_bytes.push_back(static_cast<char>(byte));
        ++pending_count;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
  bool MayChangeAfter(const std::string& token) const override {
    return ByteFallbackValue(token) >= 0;
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::string fused;
    for (const std::string& token : tokens) fused += token;
    tokens.assign(1, std::move(fused));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    if (content_.empty()) return;
    for (std::string& token : tokens) {
      size_t begin = 0, end = token.size();
      for (size_t i = 0; i < start_ && token.compare(begin, content_.size(), content_) == 0;
           ++i) {
        begin += content_.size();
      }
      for (size_t i = 0; i < stop_ && end >= begin + content_.size() &&
                         token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++i) {
        end -= content_.size();
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

// Maps every character back to the byte it stands for and joins everything into one string.
// A token with a character outside the table (e.g. an added token with a space) keeps its own
// UTF-8 bytes, as in HF.
class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();) {
        Utf8Char c = DecodeUtf8(token, pos);
        int byte = c.valid ? UnicodeToByte(c.code_point) : -1;
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(byte));
        pos += c.length;
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, ToValidUtf8(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(Pattern::Literal(std::move(replacement))), scheme_(scheme) {}
  void DecodeChain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // HF drops every replacement character of the first token, not just a leading one.
      bool drop = i == 0 && scheme_ != PrependScheme::kNever;
      tokens[i] = replacement_.ReplaceAll(tokens[i], drop ? "" : " ");
    }
  }

 private:
  Pattern replacement_;
  PrependScheme scheme_;
};

}  // namespace

int ByteFallbackValue(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int hi = HexDigit(token[3]), lo = HexDigit(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& spec) {
  if (spec.is_null()) return nullptr;
  auto type = TypeOf(spec, "decoder");
  if (!type.ok()) return type.status();
  const std::string where = "decoder " + *type;

  if (*type == "Sequence") {
    const Json* list = OptionalField(spec, "decoders");
    if (list == nullptr || !list->is_array()) return SpecError(where, "'decoders' must be a list");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const Json& item : *list) {
      auto step = ParseDecoder(item);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(*std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (*type == "Replace") {
    auto pattern = Pattern::FromJson(OptionalField(spec, "pattern"), where);
    if (!pattern.ok()) return pattern.status();
    auto content = StringField(spec, "content", where);
    if (!content.ok()) return content.status();
    return std::make_unique<ReplaceDecoder>(*std::move(pattern), *std::move(content));
  }
  if (*type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (*type == "Fuse") return std::make_unique<FuseDecoder>();
  if (*type == "Strip") {
    auto content = StringField(spec, "content", where);
    if (!content.ok()) return content.status();
    const Json* start = OptionalField(spec, "start");
    const Json* stop = OptionalField(spec, "stop");
    if (start == nullptr || !start->is_number_unsigned() || stop == nullptr ||
        !stop->is_number_unsigned()) {
      return SpecError(where, "'start' and 'stop' must be non-negative integers");
    }
    return std::make_unique<StripDecoder>(*std::move(content), start->get<size_t>(),
                                          stop->get<size_t>());
  }
  if (*type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (*type == "Metaspace") {
    auto replacement = StringField(spec, "replacement", where);
    if (!replacement.ok()) return replacement.status();
    auto scheme = ParsePrependScheme(spec, where);
    if (!scheme.ok()) return scheme.status();
    return std::make_unique<MetaspaceDecoder>(*std::move(replacement), *scheme);
  }
  return SpecError("decoder", "unsupported type '" + *type + "'");
}

}  // namespace squat::tokenizer_internal
