#include "runtime/engine/admission.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/engine/options.h"

namespace squat {

Admission::Admission(const EngineOptions& options, const ModelConfig& config, const Tokenizer& tokenizer,
                     const kv::FormatCatalogue& formats, const kv::KvCacheManager& kv)
    : config_(config),
      tokenizer_(tokenizer),
      formats_(formats),
      kv_(kv),
      default_max_tokens_(options.default_max_tokens),
      max_tokens_limit_(options.max_tokens_limit),
      max_model_len_(MaxModelLen(options, config)),
      max_prompt_tokens_(MaxPromptTokens(options, max_model_len_)) {}

absl::StatusOr<std::vector<int32_t>> Admission::PromptIds(const GenerateRequest& request) const {
  std::vector<int32_t> ids;
  if (!request.prompt_token_ids.empty()) {
    ids = request.prompt_token_ids;
    const int32_t vocab = static_cast<int32_t>(config_.vocab_size);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("prompt token id ", ids[i], " at index ", i,
                                                       " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
  } else {
    if (request.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
    ids = tokenizer_.Encode(request.prompt, request.add_special_tokens);
    if (ids.empty()) return absl::InvalidArgumentError("prompt encodes to zero tokens");
  }
  if (static_cast<int64_t>(ids.size()) > max_prompt_tokens_) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", ids.size(), " tokens; the limit is ",
                                                   max_prompt_tokens_, " (max model length ", max_model_len_, ")"));
  }
  return ids;
}

absl::StatusOr<std::unique_ptr<Sequence>> Admission::Admit(GenerateRequest request) const {
  if (request.request_id.empty()) request.request_id = NewRequestId();
  SamplingParams& sampling = request.sampling;
  // The cheap checks first: a request refused for its parameters costs no tokenization.
  if (absl::Status valid = ValidateSamplingParams(sampling); !valid.ok()) return valid;
  if (sampling.max_tokens == 0) sampling.max_tokens = default_max_tokens_;
  if (sampling.max_tokens > max_tokens_limit_) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens ", sampling.max_tokens, " exceeds the server limit of ", max_tokens_limit_));
  }
  absl::StatusOr<kv::ResolvedFormat> format =
      formats_.Resolve({request.kv_method, request.k_bits, request.v_bits}, kv_);
  if (!format.ok()) return format.status();
  absl::StatusOr<std::vector<int32_t>> prompt = PromptIds(request);
  if (!prompt.ok()) return prompt.status();
  const int64_t prompt_len = static_cast<int64_t>(prompt->size());
  if (prompt_len >= format->capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", prompt_len, " tokens; the KV pool holds at most ",
                                                   format->capacity_tokens, " tokens of one sequence in format '",
                                                   format->label, "'"));
  }
  // Quantized formats stage the prompt in full precision until it is complete.
  if (prompt_len > format->prompt_capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", prompt_len,
                                                   " tokens; the KV pool can take a prompt of at most ",
                                                   format->prompt_capacity_tokens, " tokens in format '",
                                                   format->label, "'"));
  }

  AcceptedRequest accepted;
  accepted.request_id = request.request_id;
  accepted.kv_method = kv::KvMethodName(format->format.method);
  accepted.kv_format = format->label;
  accepted.max_tokens = sampling.max_tokens;
  auto seq = std::make_unique<Sequence>();
  seq->stream = std::make_shared<RequestStream>(std::move(accepted));
  seq->kv_format = format->format;
  seq->submitted = EngineClock::now();
  seq->prompt_len = prompt_len;
  seq->max_new_tokens = std::min<int64_t>({static_cast<int64_t>(sampling.max_tokens), max_model_len_ - prompt_len,
                                           format->capacity_tokens - prompt_len});
  seq->sampler = std::make_unique<Sampler>(sampling, *prompt,
                                           std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32));
  seq->decoder = std::make_unique<StreamingDecoder>(tokenizer_);
  seq->stops = std::make_unique<StopMatcher>(sampling.stop);
  seq->tokens = *std::move(prompt);
  seq->request = std::move(request);
  return seq;
}

}  // namespace squat
