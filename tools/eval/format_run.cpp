#include "tools/eval/format_run.h"

#include <c10/core/InferenceMode.h>

#include <utility>

#include "absl/status/status.h"

namespace squat::eval {

absl::StatusOr<std::unique_ptr<FormatRun>> FormatRun::Create(LlamaModel& model,
                                                             const std::vector<EvalFormat>& formats,
                                                             int64_t max_tokens, bool isolated_attention,
                                                             bool query_gram) {
  if (formats.empty() || formats[0].format.method != kv::KvMethod::kFp16) {
    return absl::InvalidArgumentError("FormatRun: the first format must be fp16 (the reference)");
  }
  std::unique_ptr<FormatRun> run(new FormatRun(model));
  const kv::KvModelShape shape = model.kv_shape();
  for (size_t f = 0; f < formats.size(); ++f) {
    auto cache = kv::StandaloneCache::Create(shape, formats[f].format, max_tokens);
    if (!cache.ok()) return cache.status();
    run->caches_.push_back(*std::move(cache));
    if (isolated_attention && f > 0) {
      auto shadow = kv::StandaloneCache::Create(shape, formats[f].format, max_tokens);
      if (!shadow.ok()) return shadow.status();
      run->shadows_.push_back(*std::move(shadow));
    }
  }
  for (kv::StandaloneCache& cache : run->caches_) {
    run->tees_.push_back(std::make_unique<TeeCache>(&*cache, shape.num_layers));
  }
  if (query_gram) run->tees_[0]->EnableQueryGram(shape.num_kv_heads);
  return run;
}

at::Tensor FormatRun::Prefill(const std::vector<int64_t>& tokens) {
  TORCH_CHECK(!prefilled_, "FormatRun: prefilled twice");
  prefilled_ = true;
  // The fp16 tee feeds every other cache (and shadow) the same prompt q/k/v.
  std::vector<kv::SequenceKvCache*> everyone;
  for (size_t f = 1; f < caches_.size(); ++f) everyone.push_back(&*caches_[f]);
  for (kv::StandaloneCache& shadow : shadows_) everyone.push_back(&*shadow);
  tees_[0]->SetFollowers(everyone);
  tees_[0]->SetRecording(false);  // prompt outputs are not scored
  at::Tensor logits = model_.Forward(at::tensor(tokens, at::kLong), *tees_[0], /*last_only=*/true);
  // From now on the fp16 run carries only the shadows.
  std::vector<kv::SequenceKvCache*> shadows;
  for (kv::StandaloneCache& shadow : shadows_) shadows.push_back(&*shadow);
  tees_[0]->SetFollowers(shadows);
  tees_[0]->SetRecording(true);
  return logits;
}

at::Tensor FormatRun::Step(int64_t token) {
  TORCH_CHECK(prefilled_, "FormatRun: Step before Prefill");
  const int64_t n = static_cast<int64_t>(tees_.size());
  std::vector<ForwardSegment> segments;
  for (auto& tee : tees_) segments.push_back({tee.get(), 1, true});
  return model_.ForwardBatch(at::full({n}, token, at::kLong), segments);
}

}  // namespace squat::eval
