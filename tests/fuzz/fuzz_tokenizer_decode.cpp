// Tokenizer::Decode, StreamingDecoder and the id lookups on arbitrary id sequences: mostly
// ids near the vocabulary (so that real tokens, special tokens and byte-fallback runs mix),
// some anywhere in int32. Checks: well-formed UTF-8 out, streaming decode equals a full
// decode, lookups of unknown ids answer "unknown" instead of reading out of bounds.
#include <cstddef>
#include <cstdint>
#include <cstring>
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
  const squat::fuzz::FuzzTokenizers& loaded = squat::fuzz::Tokenizers();
  const squat::Tokenizer& tokenizer = (data[0] & 1) ? *loaded.sentencepiece : *loaded.byte_level;
  const bool skip_special = (data[0] & 2) != 0;
  const int64_t vocab = tokenizer.vocab_size();
  std::vector<int32_t> ids;
  for (size_t i = 1; i + 4 <= size; i += 4) {
    int32_t raw;
    std::memcpy(&raw, data + i, 4);
    // Three in four ids land in [-2, vocab + 2); the rest keep their raw value.
    if ((raw & 3) != 0) raw = static_cast<int32_t>((static_cast<uint32_t>(raw) >> 2) % (vocab + 4)) - 2;
    ids.push_back(raw);
  }

  const std::string text = tokenizer.Decode(ids, skip_special);
  FUZZ_CHECK(squat::fuzz::IsWellFormedUtf8(text));

  squat::fuzz::CheckStreamingDecode(tokenizer, ids, skip_special, text);

  for (int32_t id : ids) {
    const std::string token = tokenizer.IdToToken(id);
    if (id < 0 || id >= vocab) FUZZ_CHECK(token.empty());
    (void)tokenizer.IsSpecial(id);
    if (!token.empty()) {
      const auto back = tokenizer.TokenToId(token);
      FUZZ_CHECK(back.has_value());
    }
  }
  return 0;
}
