// The tokenizers the encode and decode fuzz targets run on, loaded once from the fixed data
// files, and the streaming-decode check both make.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace squat::fuzz {

struct FuzzTokenizers {
  std::unique_ptr<Tokenizer> byte_level;     // GPT-2 / Llama-3 style byte-level BPE
  std::unique_ptr<Tokenizer> sentencepiece;  // Llama-2 style BPE with byte fallback
};

// Loaded on first use (call it from LLVMFuzzerInitialize so that loading is not fuzzed time).
inline const FuzzTokenizers& Tokenizers() {
  static const FuzzTokenizers* tokenizers = [] {
    auto byte_level = Tokenizer::FromJson(ReadDataFile("bytelevel_tokenizer.json"));
    auto sentencepiece = Tokenizer::FromJson(ReadDataFile("sentencepiece_tokenizer.json"));
    FUZZ_CHECK(byte_level.ok() && sentencepiece.ok());
    return new FuzzTokenizers{*std::move(byte_level), *std::move(sentencepiece)};
  }();
  return *tokenizers;
}

// Feeding `ids` one by one through a StreamingDecoder gives well-formed UTF-8 pieces that add
// up to `full`, the one-shot Decode of the same ids.
inline void CheckStreamingDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special,
                                 const std::string& full) {
  StreamingDecoder decoder(tokenizer, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = decoder.Push(id);
    FUZZ_CHECK(IsWellFormedUtf8(piece));
    streamed += piece;
  }
  streamed += decoder.Flush();
  FUZZ_CHECK(streamed == full);
}

}  // namespace squat::fuzz
