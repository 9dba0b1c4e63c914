#include "tools/eval/format_run.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
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
  run->num_formats_ = formats.size();
  run->isolated_ = isolated_attention && formats.size() > 1;
  run->query_gram_ = query_gram;
  std::vector<kv::KvFormat> all;
  for (const EvalFormat& f : formats) all.push_back(f.format);
  if (run->isolated_) {
    for (size_t f = 1; f < formats.size(); ++f) all.push_back(formats[f].format);
  }
  auto caches = kv::StandaloneCache::Create(model.kv_shape(), all, max_tokens);
  if (!caches.ok()) return caches.status();
  run->caches_ = *std::move(caches);
  const int64_t sequences = static_cast<int64_t>(all.size());
  auto tee = TeeBackend::Create(run->caches_.manager(), max_tokens, sequences);
  if (!tee.ok()) return tee.status();
  run->tee_ = *std::move(tee);
  auto runner = StepRunner::Create(model, run->caches_.manager(), std::max<int64_t>(max_tokens, sequences),
                                   sequences, run->tee_.get());
  if (!runner.ok()) return runner.status();
  run->runner_ = *std::move(runner);
  return run;
}

at::Tensor FormatRun::Prefill(const std::vector<int64_t>& tokens) {
  TORCH_CHECK(!prefilled_, "FormatRun: prefilled twice");
  prefilled_ = true;
  // The fp16 run's rows also go to every other cache (and shadow).
  std::vector<TeeBackend::Follower> everyone;
  for (size_t f = 1; f < caches_.size(); ++f) everyone.push_back({&caches_.sequence(f), 0});
  tee_->SetFollowers(everyone);
  tee_->SetRecording(false);  // prompt outputs are not scored
  tee_->SetQueryGram(query_gram_);
  const std::vector<int32_t> rows(tokens.begin(), tokens.end());
  StepEntry entry;
  entry.cache = &*caches_;
  entry.tokens = rows.data();
  entry.num_tokens = static_cast<int64_t>(rows.size());
  at::Tensor logits = runner_->Run({entry});
  // From now on the fp16 run carries only the shadows.
  std::vector<TeeBackend::Follower> shadows;
  if (isolated_) {
    for (size_t i = 0; i + 1 < num_formats_; ++i) shadows.push_back({&shadow(i), 0});
  }
  tee_->SetFollowers(shadows);
  tee_->SetRecording(true);
  tee_->SetQueryGram(false);
  return logits;
}

at::Tensor FormatRun::Step(int64_t token) {
  TORCH_CHECK(prefilled_, "FormatRun: Step before Prefill");
  const int32_t id = static_cast<int32_t>(token);
  std::vector<StepEntry> entries(num_formats_);
  for (size_t f = 0; f < num_formats_; ++f) {
    entries[f].cache = &caches_.sequence(f);
    entries[f].tokens = &id;
    entries[f].num_tokens = 1;
  }
  return runner_->Run(entries);
}

}  // namespace squat::eval
