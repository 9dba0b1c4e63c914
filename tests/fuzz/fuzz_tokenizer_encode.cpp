// Tokenizer::Encode on arbitrary bytes, with a byte-level BPE (GPT-2 / Llama-3 style) and a
// SentencePiece-style BPE with byte fallback (Llama-2 style). Input: one flags byte (which
// tokenizer, add_special_tokens), then the text. Checks: ids inside the vocabulary; the
// byte-level tokenizer gives back well-formed input exactly; streaming decode equals a full
// decode; every decode is well-formed UTF-8.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

struct Tokenizers {
  std::unique_ptr<squat::Tokenizer> byte_level;
  std::unique_ptr<squat::Tokenizer> sentencepiece;
};

Tokenizers* Loaded() {
  static Tokenizers* tokenizers = [] {
    auto* t = new Tokenizers();
    auto byte_level = squat::Tokenizer::FromJson(squat::fuzz::ReadDataFile("bytelevel_tokenizer.json"));
    auto sentencepiece = squat::Tokenizer::FromJson(squat::fuzz::ReadDataFile("sentencepiece_tokenizer.json"));
    FUZZ_CHECK(byte_level.ok() && sentencepiece.ok());
    t->byte_level = *std::move(byte_level);
    t->sentencepiece = *std::move(sentencepiece);
    return t;
  }();
  return tokenizers;
}

std::string StreamDecode(const squat::Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special) {
  squat::StreamingDecoder decoder(tokenizer, skip_special);
  std::string text;
  for (int32_t id : ids) text += decoder.Push(id);
  return text + decoder.Flush();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Loaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const bool use_byte_level = (flags & 1) != 0;
  const bool add_special = (flags & 2) != 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const squat::Tokenizer& tokenizer =
      use_byte_level ? *Loaded()->byte_level : *Loaded()->sentencepiece;

  const std::vector<int32_t> ids = tokenizer.Encode(text, add_special);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size());
  if (!text.empty()) FUZZ_CHECK(!ids.empty());

  const std::string decoded = tokenizer.Decode(ids, /*skip_special_tokens=*/false);
  FUZZ_CHECK(squat::fuzz::IsWellFormedUtf8(decoded));
  // Byte-level BPE is lossless: every byte has a token, and the byte-level pre-tokenizer
  // neither adds nor drops text. (Ill-formed input comes back with U+FFFD, so only
  // well-formed input is compared.)
  if (use_byte_level && !add_special && squat::fuzz::IsWellFormedUtf8(text)) FUZZ_CHECK(decoded == text);

  for (bool skip_special : {false, true}) {
    FUZZ_CHECK(StreamDecode(tokenizer, ids, skip_special) == tokenizer.Decode(ids, skip_special));
  }
  return 0;
}
