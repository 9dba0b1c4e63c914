// Runs engine steps (nano-vllm's model runner, in our terms): the sequences the scheduler
// picked become one StepBatch in persistent buffers, the model runs every linear layer once
// over all rows and makes one attention call per layer through the KV pool's backend, and the
// batch's quantization work and window commits follow. Engine thread only; internal to
// runtime/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/attention_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/step_batch.h"
#include "runtime/model/llama_model.h"

namespace squat {

// One sequence's rows in a step: tokens[0, num_tokens) at positions cache->length() ...
struct StepEntry {
  kv::SequenceKvCache* cache = nullptr;
  const int32_t* tokens = nullptr;
  int64_t num_tokens = 0;
  bool prompt_complete = true;  // false: a prompt chunk with more to come
  bool logits = true;           // the last row's logits are wanted
  bool all_logits = false;      // every row's logits are wanted (tools and tests)
};

class StepRunner {
 public:
  // Buffers for steps of up to max_rows rows and max_sequences sequences of `kv`'s pool;
  // `backend` replaces the pool's own (squat-eval's tee).
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(LlamaModel& model, kv::KvCacheManager& kv,
                                                            int64_t max_rows, int64_t max_sequences,
                                                            kv::AttentionBackend* backend = nullptr);

  // One step over the entries, in order; float32 logits [rows asked for, vocab] on the model's
  // device. On an exception the caches of the step may be half written.
  at::Tensor Run(const std::vector<StepEntry>& entries);

 private:
  StepRunner(LlamaModel& model, kv::AttentionBackend& backend, std::unique_ptr<kv::StepBatch> batch)
      : model_(model), backend_(backend), batch_(std::move(batch)) {}
  LlamaModel& model_;
  kv::AttentionBackend& backend_;
  std::unique_ptr<kv::StepBatch> batch_;
};

// One sequence through a runner of its own (tools and tests, not the engine: it allocates its
// step buffers per call): logits of the last row [1, vocab], or of every row.
at::Tensor ForwardSequence(LlamaModel& model, kv::KvCacheManager& kv, kv::SequenceKvCache& cache,
                           const std::vector<int32_t>& tokens, bool last_only = true, bool prompt_complete = true);

}  // namespace squat
