// Tokenizer::Encode on arbitrary bytes, with a byte-level BPE (GPT-2 / Llama-3 style) and a
// SentencePiece-style BPE with byte fallback (Llama-2 style). Input: one flags byte (which
// tokenizer, add_special_tokens), then the text. Checks: ids inside the vocabulary; the
// byte-level tokenizer gives back well-formed input exactly; streaming decode equals a full
// decode; every decode is well-formed UTF-8.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/fuzz_tokenizers.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  squat::fuzz::Tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const bool use_byte_level = (flags & 1) != 0;
  const bool add_special = (flags & 2) != 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const squat::fuzz::FuzzTokenizers& loaded = squat::fuzz::Tokenizers();
  const squat::Tokenizer& tokenizer = use_byte_level ? *loaded.byte_level : *loaded.sentencepiece;

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
    squat::fuzz::CheckStreamingDecode(tokenizer, ids, skip_special, tokenizer.Decode(ids, skip_special));
  }
  return 0;
}
