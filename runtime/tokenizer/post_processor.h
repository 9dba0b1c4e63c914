// tokenizer.json "post_processor" section, single-sequence form only (private to squat_tokenizer).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/tokenizer/json.h"

namespace squat::tokenizer_internal {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens around one encoded sequence.
  virtual std::vector<int32_t> Process(std::vector<int32_t> ids) const = 0;
};

// TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel (no-op for ids) and
// Sequence. Returns nullptr for null.
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const Json& spec);

}  // namespace squat::tokenizer_internal
