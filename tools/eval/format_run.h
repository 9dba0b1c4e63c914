// One token sequence run through every KV format side by side. The prompt is prefilled once:
// prompt attention is full precision in every format (kv_cache.h), so one forward pass whose
// q/k/v go to every format's cache gives each cache exactly what its own prefill would store.
// Each decode step is then one batched forward pass (each linear layer once for all formats,
// attention per format through its own cache). Optionally every quantized format also has a
// shadow cache fed the fp16 run's q/k/v, which isolates the cache's own attention error.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/standalone_cache.h"
#include "runtime/llama_model.h"
#include "tools/eval/formats.h"
#include "tools/eval/tee_cache.h"

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

  size_t num_formats() const { return caches_.size(); }
  bool isolated() const { return !shadows_.empty(); }
  // After a Step: format f's attention output of `layer` in its own run, and (f >= 1, isolated)
  // its shadow's output for the fp16 run's inputs; the fp16 run's is attention(0, layer).
  const at::Tensor& attention(size_t f, int64_t layer) const { return tees_[f]->output(layer); }
  const at::Tensor& isolated_attention(size_t f, int64_t layer) const {
    return tees_[0]->follower_output(f - 1, layer);
  }
  // The prompt's query Gram per layer (float64 [H_kv, d, d]); empty unless query_gram.
  const std::vector<at::Tensor>& query_grams() const { return tees_[0]->query_grams(); }

 private:
  explicit FormatRun(LlamaModel& model) : model_(model) {}
  LlamaModel& model_;
  std::vector<kv::StandaloneCache> caches_;   // one per format
  std::vector<kv::StandaloneCache> shadows_;  // one per quantized format, when isolated
  std::vector<std::unique_ptr<TeeCache>> tees_;  // the model-facing cache of each format
  bool prefilled_ = false;
};

}  // namespace squat::eval
