// One token sequence run through every KV format side by side. The prompt is prefilled once:
// prompt attention is full precision in every format (kv_cache.h), so one forward pass whose
// q/k/v go to every format's cache gives each cache exactly what its own prefill would store.
// Each decode step is then one batched forward pass (each linear layer once for all formats,
// one attention call per layer for all of them). Optionally every quantized format also has a
// shadow cache fed the fp16 run's q/k/v, which isolates the cache's own attention error.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/standalone_cache.h"
#include "runtime/model/llama_model.h"
#include "runtime/model/step_runner.h"
#include "tools/eval/formats.h"
#include "tools/eval/tee_backend.h"

namespace squat::eval {

class FormatRun {
 public:
  // formats[0] must be the full-precision reference. max_tokens: prompt + decoded tokens.
  static absl::StatusOr<std::unique_ptr<FormatRun>> Create(LlamaModel& model, const std::vector<EvalFormat>& formats,
                                                           int64_t max_tokens, bool isolated_attention,
                                                           bool query_gram);

  // Prefills `tokens`; returns float32 logits [1, vocab] of the last prompt position (the same
  // for every format).
  at::Tensor Prefill(const std::vector<int64_t>& tokens);
  // Feeds one token to every format; returns float32 logits [formats, vocab].
  at::Tensor Step(int64_t token);

  size_t num_formats() const { return num_formats_; }
  bool isolated() const { return isolated_; }
  // After a Step: format f's attention output of `layer` in its own run ([H_q, d]), and (f >= 1,
  // isolated) its shadow's output for the fp16 run's inputs; the fp16 run's is attention(0, layer).
  at::Tensor attention(size_t f, int64_t layer) const { return tee_->output(layer)[f]; }
  at::Tensor isolated_attention(size_t f, int64_t layer) const { return tee_->follower_output(f - 1, layer)[0]; }
  // The prompt's query Gram per layer (float64 [H_kv, d, d]); empty unless query_gram.
  const std::vector<at::Tensor>& query_grams() const { return tee_->query_grams(); }

 private:
  explicit FormatRun(LlamaModel& model) : model_(model) {}
  kv::SequenceKvCache& shadow(size_t i) const { return caches_.sequence(num_formats_ + i); }
  LlamaModel& model_;
  // One pool: the formats' sequences, then (isolated) one shadow per quantized format.
  kv::StandaloneCache caches_;
  size_t num_formats_ = 0;
  bool isolated_ = false, query_gram_ = false, prefilled_ = false;
  std::unique_ptr<TeeBackend> tee_;
  std::unique_ptr<StepRunner> runner_;
};

}  // namespace squat::eval
