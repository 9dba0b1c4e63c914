#include "runtime/model/step_runner.h"

#include <c10/core/InferenceMode.h>

#include <utility>

#include "absl/status/status.h"

namespace squat {

absl::StatusOr<std::unique_ptr<StepRunner>> StepRunner::Create(LlamaModel& model, kv::KvCacheManager& kv,
                                                               int64_t max_rows, int64_t max_sequences,
                                                               kv::AttentionBackend* backend) {
  kv::StepCapacity capacity;
  capacity.max_rows = max_rows;
  capacity.max_sequences = max_sequences;
  capacity.max_page_ids = kv.StepPageIds(max_sequences);
  auto batch = kv::StepBatch::Create(kv, capacity);
  if (!batch.ok()) return batch.status();
  return std::unique_ptr<StepRunner>(
      new StepRunner(model, backend != nullptr ? *backend : kv.backend(), *std::move(batch)));
}

at::Tensor StepRunner::Run(const std::vector<StepEntry>& entries) {
  c10::InferenceMode inference;
  kv::StepBatch& batch = *batch_;
  batch.Begin();
  for (const StepEntry& e : entries) {
    batch.Add(e.cache, e.tokens, e.num_tokens, e.prompt_complete, e.logits, e.all_logits);
  }
  batch.Seal();
  backend_.BeginStep(batch);
  at::Tensor logits = model_.Forward(batch, backend_);
  batch.Finish(backend_);
  return logits;
}

at::Tensor ForwardSequence(LlamaModel& model, kv::KvCacheManager& kv, kv::SequenceKvCache& cache,
                           const std::vector<int32_t>& tokens, bool last_only, bool prompt_complete) {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  TORCH_CHECK(rows > 0, "ForwardSequence: no tokens");
  auto runner = StepRunner::Create(model, kv, rows, 1);
  TORCH_CHECK(runner.ok(), "ForwardSequence: ", runner.status().ToString());
  StepEntry entry;
  entry.cache = &cache;
  entry.tokens = tokens.data();
  entry.num_tokens = rows;
  entry.prompt_complete = prompt_complete;
  entry.all_logits = !last_only;
  return (*runner)->Run({entry});
}

}  // namespace squat
