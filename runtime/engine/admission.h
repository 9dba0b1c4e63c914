// Admission (vLLM v1's input processor, in our terms): turns a GenerateRequest into a
// Sequence the scheduler can run. It applies the engine's defaults (request id, max_tokens, KV
// format) and validates everything about the request once: prompt, max_tokens, sampling, KV
// format and whether the pool can ever hold it. Runs on the submitting thread; reads only state
// that does not change after Engine::Create. Internal to runtime/.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kvcache/format_catalogue.h"
#include "kvcache/kv_cache.h"
#include "runtime/engine/engine.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/engine/sequence.h"
#include "runtime/tokenizer/tokenizer.h"

namespace squat {

class Admission {
 public:
  // Every reference must outlive the admission.
  Admission(const EngineOptions& options, const ModelConfig& config, const Tokenizer& tokenizer,
            const kv::FormatCatalogue& formats, const kv::KvCacheManager& kv);

  // INVALID_ARGUMENT naming what is wrong; the sequence is waiting, with its stream.
  absl::StatusOr<std::unique_ptr<Sequence>> Admit(GenerateRequest request) const;

  int64_t max_model_len() const { return max_model_len_; }

 private:
  // The prompt's token ids, checked against the vocabulary and the prompt limit.
  absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateRequest& request) const;

  const ModelConfig& config_;
  const Tokenizer& tokenizer_;
  const kv::FormatCatalogue& formats_;
  const kv::KvCacheManager& kv_;
  const int32_t default_max_tokens_;
  const int32_t max_tokens_limit_;
  const int64_t max_model_len_;
  const int64_t max_prompt_tokens_;
};

}  // namespace squat
