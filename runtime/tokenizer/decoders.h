// tokenizer.json "decoder" section (private to squat_tokenizer).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/json.h"

namespace squat::tokenizer_internal {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF's decode_chain: rewrites the token strings; the text is their concatenation.
  virtual void DecodeChain(std::vector<std::string>& tokens) const = 0;
  // Whether a single trailing token of this text can still change once more tokens follow:
  // true for ByteFallback's <0xXX> tokens, whose run is validated as a whole.
  virtual bool MayChangeAfter(const std::string& token) const { return false; }
};

// Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel and Metaspace. nullptr for null.
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& spec);

// "<0xXX>" -> XX, else -1.
int ByteFallbackValue(std::string_view token);

}  // namespace squat::tokenizer_internal
