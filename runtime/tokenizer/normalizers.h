// tokenizer.json "normalizer" section (private to squat_tokenizer).
#pragma once

#include <memory>
#include <string>

#include "runtime/tokenizer/json.h"

namespace squat::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string Normalize(std::string text) const = 0;
};

// Sequence, Prepend, Replace, Strip, NFC and NFD. Returns nullptr for null.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& spec);

}  // namespace squat::tokenizer_internal
