// Hugging Face tokenizer.json: byte-level BPE (GPT-2 / Llama-3 / Qwen2 pre-tokenizer regex)
// and SentencePiece-style BPE with byte fallback (Llama-2 / Mistral), with added tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace squat {

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  virtual ~Tokenizer() = default;

  // add_special_tokens applies the post-processor (e.g. Llama-2's BOS), like HF's
  // tokenizer.encode(text, add_special_tokens=...). Added tokens in the text are matched.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const = 0;
  // Like HF's decode(ids, skip_special_tokens=...). Invalid UTF-8 becomes U+FFFD.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const = 0;

  virtual int32_t vocab_size() const = 0;  // largest id + 1, added tokens included
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual std::string IdToToken(int32_t id) const = 0;  // "" when unknown
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Turns a growing list of token ids into text deltas that never split a UTF-8 character
// (byte-fallback and byte-level tokens can end mid-character) and keep the spacing a full
// Decode would give.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  // Returns the newly completed text (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is still held back (an incomplete character becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // ids_[prefix_offset_, read_offset_) were already emitted
  size_t read_offset_ = 0;
};

}  // namespace squat
