// Tokenizer::Decode, StreamingDecoder and the id lookups on arbitrary id sequences: mostly
// ids near the vocabulary (so that real tokens, special tokens and byte-fallback runs mix),
// some anywhere in int32. Checks: well-formed UTF-8 out, streaming decode equals a full
// decode, lookups of unknown ids answer "unknown" instead of reading out of bounds.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

std::vector<std::unique_ptr<squat::Tokenizer>>* Loaded() {
  static auto* tokenizers = [] {
    auto* list = new std::vector<std::unique_ptr<squat::Tokenizer>>();
    for (const char* name : {"bytelevel_tokenizer.json", "sentencepiece_tokenizer.json"}) {
      auto tokenizer = squat::Tokenizer::FromJson(squat::fuzz::ReadDataFile(name));
      FUZZ_CHECK(tokenizer.ok());
      list->push_back(*std::move(tokenizer));
    }
    return list;
  }();
  return tokenizers;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Loaded();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const squat::Tokenizer& tokenizer = *(*Loaded())[data[0] & 1];
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

  squat::StreamingDecoder decoder(tokenizer, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = decoder.Push(id);
    FUZZ_CHECK(squat::fuzz::IsWellFormedUtf8(piece));
    streamed += piece;
  }
  streamed += decoder.Flush();
  FUZZ_CHECK(streamed == text);

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
