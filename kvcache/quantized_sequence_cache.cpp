#include "kvcache/quantized_sequence_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvcache/page_geometry.h"
#include "kvcache/step_batch.h"

namespace squat::kv {

QuantizedSequenceCache::QuantizedSequenceCache(const KvModelShape& shape, const KvFormat& format,
                                               int64_t reserved_tokens, std::shared_ptr<PagePool> pool,
                                               QuantizedSequenceLeases leases,
                                               std::shared_ptr<const SquatSubspace> state,
                                               std::shared_ptr<SquatSubspace> buildable)
    : shape_(shape), format_(format), reserved_(reserved_tokens), pool_(std::move(pool)),
      tokens_per_page_(TokensPerPage(shape, format, pool_->page_bytes())),
      slots_per_page_(TokensPerPage(shape, KvFormat{KvMethod::kFp16}, pool_->page_bytes())),
      data_pages_(std::move(leases.data)), residual_pages_(std::move(leases.residual)),
      staging_pages_(std::move(leases.staging)), residual_(residual_pages_, shape, slots_per_page_),
      staging_(staging_pages_, shape, slots_per_page_), state_(std::move(state)), buildable_(std::move(buildable)),
      owns_state_(state_ != nullptr && !state_->manager_shared()) {
  TORCH_CHECK(residual_.capacity() >= ResidualSlots(format), "residual lease too small");
  TORCH_CHECK(staging_.capacity() >= reserved_, "staging lease too small");
  TORCH_CHECK(HasSquatState(format.method) == (state_ != nullptr), "SQuat state given for the wrong format");
  TORCH_CHECK(!buildable_ || buildable_ == state_, "buildable state must be the sequence's state");
  if (leases.gram.size() > 0) {
    gram_ = QueryGramAccumulator(std::move(leases.gram), std::move(leases.pending_queries), shape);
  }
}

int64_t QuantizedSequenceCache::pages() const {
  return data_pages_.size() + residual_pages_.size() + staging_pages_.size() + gram_.pages() +
         (owns_state_ ? state_->pages() : 0);
}

std::shared_ptr<const SquatSubspace> QuantizedSequenceCache::subspace() const {
  return state_ && state_->all_ready() ? state_ : nullptr;
}

QuantizedTokenStore QuantizedSequenceCache::quantized_store() const {
  return QuantizedTokenStore(data_pages_, shape_, format_, tokens_per_page_);
}

void QuantizedSequenceCache::Plan(int64_t num_tokens, bool prompt_complete, StepPlanner& planner,
                                  SequenceStep& step) const {
  TORCH_CHECK(num_tokens > 0, "step: num_tokens must be > 0, got ", num_tokens);
  TORCH_CHECK(length_ + num_tokens <= reserved_, "step: ", length_ + num_tokens,
              " tokens exceed the sequence's reserved ", reserved_);
  const int64_t r = format_.residual_length, g = format_.group_size;
  step.start = length_;
  auto state_pages = [&]() { return state_ ? planner.AddPages(state_->page_ids()) : PageSpan(); };
  if (!prompt_complete_) {
    // A prompt chunk: its rows wait in staging; attention is full precision over them.
    step.slots = planner.AddPages(staging_pages_.pages());
    step.collects_queries = gram_.active();
    step.prompt_ends = prompt_complete;
    if (!prompt_complete) return;
    // Spec 3: keys [0, L - L mod R) and values [0, L - R) into the pages, the rest into the windows.
    const int64_t total = length_ + num_tokens;
    const int64_t keys = total - total % r, values = std::max<int64_t>(0, total - r);
    const PageSpan data = keys > 0 || values > 0 ? planner.AddPages(data_pages_.pages()) : PageSpan();
    if (keys > 0) {
      step.has_key_work = true;
      step.key_work.src = step.slots;
      step.key_work.dst = data;
      step.key_work.state = state_pages();
      step.key_work.num_groups = static_cast<int32_t>(keys / g);
    }
    if (values > 0) {
      step.has_value_work = true;
      step.value_work.src = step.slots;
      step.value_work.dst = data;
      step.value_work.num_tokens = static_cast<int32_t>(values);
    }
    return;
  }
  TORCH_CHECK(prompt_complete, "step: a prompt chunk after the prompt ended");
  TORCH_CHECK(num_tokens == 1, "step: after the prompt, a ", KvMethodName(format_.method),
              " cache takes one token per step, got ", num_tokens);
  const WindowState& w = window_;
  step.decode = true;
  step.data = planner.AddPages(data_pages_.pages());
  step.residual = planner.AddPages(residual_pages_.pages());
  step.tokens = length_ + 1;
  step.quantized_keys = w.quantized_keys;
  step.quantized_values = w.quantized_values;
  step.key_slot = w.residual_keys;
  const int64_t capacity = data_pages_.size() * tokens_per_page_;
  // Spec 5.1: the keys are read in full precision by this step, then R of them move into the
  // pages; the oldest value leaves a window that now holds R + 1.
  if (w.residual_keys + 1 == r) {
    TORCH_CHECK(w.quantized_keys + r <= capacity, "step: key flush beyond the reserved pages");
    step.has_key_work = true;
    step.key_work.src = step.residual;
    step.key_work.dst = step.data;
    step.key_work.state = state_pages();
    step.key_work.dst_first_token = static_cast<int32_t>(w.quantized_keys);
    step.key_work.num_groups = static_cast<int32_t>(r / g);
  }
  if (w.residual_values + 1 > r) {
    TORCH_CHECK(w.quantized_values + 1 <= capacity, "step: value slide beyond the reserved pages");
    step.has_value_work = true;
    step.value_work.src = step.residual;
    step.value_work.dst = step.data;
    step.value_work.ring = static_cast<int32_t>(ResidualSlots(format_));
    step.value_work.src_first_slot = static_cast<int32_t>(w.quantized_values % ResidualSlots(format_));
    step.value_work.dst_first_token = static_cast<int32_t>(w.quantized_values);
    step.value_work.num_tokens = 1;
  }
}

void QuantizedSequenceCache::AddPromptQueries(int64_t layer, const at::Tensor& q_rot) {
  // A subspace shared through the manager may have been built by another prompt meanwhile.
  if (gram_.active() && !state_->ready(layer)) gram_.Add(layer, q_rot);
}

void QuantizedSequenceCache::PrepareTasks(const SequenceStep& step) {
  if (!step.prompt_ends || !state_) return;
  // The state of every layer still to build, in one batch, before the prompt's keys are
  // quantized with it.
  const int64_t total = length_ + step.num_rows;
  std::vector<int64_t> unbuilt;
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    if (!state_->ready(layer)) {
      TORCH_CHECK(buildable_ && gram_.active() && gram_.tokens(layer) == total, "SQuat subspace of layer ", layer,
                  " cannot be built: its prompt's queries were not collected");
      unbuilt.push_back(layer);
    }
  }
  if (unbuilt.empty()) return;
  const int64_t rows = shape_.num_attention_heads / shape_.num_kv_heads * total;
  buildable_->BuildLayers(unbuilt, [this](int64_t layer) { return gram_.Total(layer); }, rows);
}

void QuantizedSequenceCache::Commit(const SequenceStep& step) {
  TORCH_CHECK(step.cache == this && step.start == length_, "Commit: not this sequence's step");
  const int64_t r = format_.residual_length;
  WindowState& w = window_;
  if (!step.decode) {
    length_ += step.num_rows;
    if (step.prompt_ends) CompletePrompt();
    return;
  }
  ++length_;
  ++w.residual_keys;
  ++w.residual_values;
  w.step_quantized_keys = w.quantized_keys;
  w.step_residual_keys = w.residual_keys;
  w.step_flushed = step.has_key_work;
  if (step.has_key_work) {
    w.quantized_keys += r;
    w.residual_keys = 0;
    ++w.key_flushes;
  }
  if (step.has_value_work) {
    ++w.quantized_values;
    --w.residual_values;
  }
}

void QuantizedSequenceCache::CompletePrompt() {
  const int64_t total = length_, r = format_.residual_length;
  WindowState& w = window_;
  w.quantized_keys = total - total % r;
  w.residual_keys = total - w.quantized_keys;
  w.quantized_values = std::max<int64_t>(0, total - r);
  w.residual_values = total - w.quantized_values;
  w.step_quantized_keys = 0;
  w.step_residual_keys = total;
  w.step_flushed = false;
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    if (w.residual_keys > 0) {
      residual_.Write(layer, KvPart::kKeys, 0, staging_.Read(layer, KvPart::kKeys, w.quantized_keys, w.residual_keys));
    }
    WriteValueRing(layer, w.quantized_values,
                   staging_.Read(layer, KvPart::kValues, w.quantized_values, w.residual_values));
  }
  gram_.Release();
  staging_pages_.Reset();
  staging_ = Fp16SlotStore();
  buildable_.reset();
  prompt_complete_ = true;
}

void QuantizedSequenceCache::WriteValueRing(int64_t layer, int64_t first_token, const at::Tensor& values) {
  const int64_t ring = ResidualSlots(format_), count = values.size(1);
  const int64_t slot = first_token % ring, head = std::min(count, ring - slot);
  residual_.Write(layer, KvPart::kValues, slot, values.narrow(1, 0, head));
  if (count > head) residual_.Write(layer, KvPart::kValues, 0, values.narrow(1, head, count - head));
}

absl::Status QuantizedSequenceCache::Reserve(int64_t total_tokens) {
  if (total_tokens <= reserved_) return absl::OkStatus();
  const int64_t page_bytes = pool_->page_bytes();
  const int64_t more_data =
      std::max<int64_t>(0, PagesForSequence(shape_, format_, page_bytes, total_tokens).data - data_pages_.size());
  const int64_t more_staging =
      prompt_complete_
          ? 0
          : std::max<int64_t>(0, PromptStagingPages(shape_, format_, page_bytes, total_tokens) - staging_pages_.size());
  // A shared subspace occupies the pool too, whoever counts it.
  const int64_t state_elsewhere = state_ && !owns_state_ ? state_->pages() : 0;
  if (pages() + state_elsewhere + more_data + more_staging > pool_->total_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: ", total_tokens, " tokens of ", KvMethodName(format_.method), " need ",
        pages() + state_elsewhere + more_data + more_staging, " pages", prompt_complete_ ? "" : " while the prompt is incomplete",
        ", the pool has ", pool_->total_pages()));
  }
  absl::StatusOr<std::vector<int64_t>> ids = pool_->Allocate(more_data + more_staging);
  if (!ids.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: no room now to grow a sequence to ", total_tokens,
                                                     " tokens: ", ids.status().message()));
  }
  std::vector<int64_t>& got = *ids;
  data_pages_.Append(PageLease(pool_, std::vector<int64_t>(got.begin(), got.begin() + more_data)));
  staging_pages_.Append(PageLease(pool_, std::vector<int64_t>(got.begin() + more_data, got.end())));
  if (!prompt_complete_) staging_ = Fp16SlotStore(staging_pages_, shape_, slots_per_page_);
  reserved_ = total_tokens;
  return absl::OkStatus();
}

}  // namespace squat::kv
