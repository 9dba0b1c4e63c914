// A byte-level BPE tokenizer for generated checkpoints, in Hugging Face tokenizer.json form.
// Merges are learned from a built-in English paragraph; the rest of the vocabulary is special
// tokens. Independent of runtime/tokenizer.* on purpose: the generator produces test inputs for it.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace squat::checkpoint {

inline constexpr const char* kBeginOfText = "<|begin_of_text|>";
inline constexpr const char* kEndOfText = "<|end_of_text|>";

struct GeneratedTokenizer {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  int32_t bos_id = 0;
  int32_t eos_id = 0;
  int64_t num_merges = 0;
};

// vocab_size counts everything: 256 byte tokens, learned merges and special tokens.
absl::StatusOr<GeneratedTokenizer> BuildByteLevelTokenizer(int64_t vocab_size, int64_t model_max_length);

}  // namespace squat::checkpoint
