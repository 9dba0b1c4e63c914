// tokenizer.json "pre_tokenizer" section (private to squat_tokenizer).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/json.h"

namespace squat::tokenizer_internal {

struct PreToken {
  std::string text;
  bool at_input_start;  // starts at offset 0 of the original text (Metaspace prepend "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces every piece by its sub-pieces, in order; empty pieces are dropped.
  virtual void Split(std::vector<PreToken>& pieces) const = 0;
};

// Metaspace's rule for adding the replacement character in front of a piece.
enum class PrependScheme { kAlways, kFirst, kNever };
// prepend_scheme, or the older add_prefix_space flag it replaced (Metaspace pre-tokenizer and
// decoder).
absl::StatusOr<PrependScheme> ParsePrependScheme(const Json& spec, std::string_view where);

// Sequence, Split, ByteLevel and Metaspace. Returns nullptr for null.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& spec);

}  // namespace squat::tokenizer_internal
