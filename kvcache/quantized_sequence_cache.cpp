#include "kvcache/quantized_sequence_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvcache/attend_inputs.h"
#include "kvcache/dense_attention.h"
#include "kvcache/page_geometry.h"
#include "kvcache/quantized_blocks.h"
#include "kvcache/rope_at.h"

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
      staging_pages_(std::move(leases.staging)), quantized_(data_pages_, shape, format, tokens_per_page_),
      residual_(residual_pages_, shape, slots_per_page_), staging_(staging_pages_, shape, slots_per_page_),
      state_(std::move(state)), buildable_(std::move(buildable)),
      owns_state_(state_ != nullptr && !state_->manager_shared()), attended_(shape.num_layers, 0),
      windows_(shape.num_layers) {
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
  return prompt_complete_ ? state_ : nullptr;
}

at::Tensor QuantizedSequenceCache::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                                          const at::Tensor& k_rot, const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < shape_.num_layers, "Attend: layer ", layer, " out of range");
  const int64_t tokens = CheckAttendInputs(shape_, pre_rope(), q_rot, k_pre, k_rot, v);
  TORCH_CHECK(attended_[layer] == length_, "Attend: layer ", layer, " attended twice before Commit");
  TORCH_CHECK(length_ + tokens <= reserved_, "Attend: ", length_ + tokens, " tokens exceed the sequence's reserved ",
              reserved_);
  const at::Tensor& keys = pre_rope() ? k_pre : k_rot;
  if (!prompt_complete_) return AttendPrompt(layer, q_rot, keys, k_rot, v);
  TORCH_CHECK(tokens == 1, "Attend: after the prompt, a ", KvMethodName(format_.method),
              " cache takes one token per step, got ", tokens);
  return Decode(layer, q_rot, keys, v);
}

std::vector<std::vector<at::Tensor>> QuantizedSequenceCache::Compensation(int64_t layer) const {
  if (!state_) return {};  // KIVI
  return state_->Load(layer);
}

at::Tensor QuantizedSequenceCache::AttendPrompt(int64_t layer, const at::Tensor& q_rot, const at::Tensor& keys,
                                                const at::Tensor& k_rot, const at::Tensor& v) {
  const int64_t start = length_, tokens = q_rot.size(1);
  staging_.Write(layer, KvPart::kKeys, start, keys);
  staging_.Write(layer, KvPart::kValues, start, v);
  // A subspace shared through the manager may have been built by another prompt meanwhile.
  if (gram_.active() && !state_->ready(layer)) gram_.Add(layer, q_rot);
  attended_[layer] = start + tokens;

  // Full precision over the whole prompt so far (spec 3.1).
  if (start == 0) return CausalAttention(q_rot, k_rot, v, 0);
  at::Tensor earlier_keys = staging_.Read(layer, KvPart::kKeys, 0, start);
  if (pre_rope()) earlier_keys = ApplyRopeAt(earlier_keys, 0, shape_.inv_freq);
  return CausalAttention(q_rot, at::cat({earlier_keys, k_rot}, 1),
                         staging_.Read(layer, KvPart::kValues, 0, start + tokens), start);
}

void QuantizedSequenceCache::CompletePrompt() {
  // The state of every layer still to build, in one batch.
  std::vector<int64_t> unbuilt;
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    if (state_ && !state_->ready(layer)) {
      TORCH_CHECK(buildable_ && gram_.active() && gram_.tokens(layer) == length_, "SQuat subspace of layer ",
                  layer, " cannot be built: its prompt's queries were not collected");
      unbuilt.push_back(layer);
    }
  }
  if (!unbuilt.empty()) {
    const int64_t rows = shape_.num_attention_heads / shape_.num_kv_heads * length_;
    buildable_->BuildLayers(unbuilt, [this](int64_t layer) { return gram_.Total(layer); }, rows);
  }
  // On CUDA, two launches quantize every layer's prompt (else ATen ops per layer and head).
  const int64_t r = format_.residual_length;
  KernelQuantization prompt;
  prompt.source_pages = staging_pages_.pages();
  prompt.layers = shape_.num_layers;
  prompt.key_groups = (length_ - length_ % r) / format_.group_size;
  prompt.value_tokens = std::max<int64_t>(0, length_ - r);
  const bool packed = shape_.device.is_cuda() && QuantizeWithKernels(BasePlan(), prompt);
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) QuantizePrompt(layer, packed);
  // The prompt now lives in the quantized pages and the windows.
  gram_.Release();
  staging_pages_.Reset();
  staging_ = Fp16SlotStore();
  buildable_.reset();
  prompt_complete_ = true;
}

void QuantizedSequenceCache::QuantizePrompt(int64_t layer, bool packed) {
  const int64_t tokens = length_, r = format_.residual_length;
  const at::Tensor keys = staging_.Read(layer, KvPart::kKeys, 0, tokens);
  const at::Tensor values = staging_.Read(layer, KvPart::kValues, 0, tokens);

  WindowState& w = windows_[layer];
  w.quantized_keys = tokens - tokens % r;
  w.residual_keys = tokens - w.quantized_keys;
  if (w.quantized_keys > 0 && !packed) {
    quantized_.WriteKeys(layer, 0, QuantizeKeyBlock(keys.narrow(1, 0, w.quantized_keys), format_,
                                                    Compensation(layer)));
  }
  if (w.residual_keys > 0) {
    residual_.Write(layer, KvPart::kKeys, 0, keys.narrow(1, w.quantized_keys, w.residual_keys));
  }

  w.quantized_values = std::max<int64_t>(0, tokens - r);
  w.residual_values = tokens - w.quantized_values;
  if (w.quantized_values > 0 && !packed) {
    quantized_.WriteValues(layer, 0, QuantizeValueTokens(values.narrow(1, 0, w.quantized_values), format_));
  }
  WriteValueRing(layer, w.quantized_values, values.narrow(1, w.quantized_values, w.residual_values));

  w.step_quantized_keys = 0;
  w.step_residual_keys = tokens;
  w.step_flushed = false;
}

at::Tensor QuantizedSequenceCache::Decode(int64_t layer, const at::Tensor& q_rot, const at::Tensor& key,
                                          const at::Tensor& v) {
  WindowState& w = windows_[layer];
  const int64_t position = w.tokens();
  residual_.Write(layer, KvPart::kKeys, w.residual_keys, key);
  ++w.residual_keys;
  WriteValueRing(layer, position, v);
  ++w.residual_values;
  attended_[layer] = position + 1;

  // CPU reference path: dequantize every quantized token, then dense attention.
  const at::ScalarType dtype = shape_.compute_dtype;
  std::vector<at::Tensor> key_parts, value_parts;
  if (w.quantized_keys > 0) {
    key_parts.push_back(DequantizeKeyBlock(quantized_.ReadKeys(layer, w.quantized_keys), format_).to(dtype));
  }
  key_parts.push_back(residual_.Read(layer, KvPart::kKeys, 0, w.residual_keys));
  at::Tensor keys = at::cat(key_parts, 1);
  if (pre_rope()) keys = ApplyRopeAt(keys, 0, shape_.inv_freq);
  if (w.quantized_values > 0) {
    value_parts.push_back(
        DequantizeValueTokens(quantized_.ReadValues(layer, w.quantized_values), format_).to(dtype));
  }
  value_parts.push_back(ReadValueRing(layer, w.quantized_values, w.residual_values));
  at::Tensor out = CausalAttention(q_rot, keys, at::cat(value_parts, 1), position);

  w.step_quantized_keys = w.quantized_keys;
  w.step_residual_keys = w.residual_keys;
  w.step_flushed = w.residual_keys == format_.residual_length;
  // The keys were used in full precision above; only now do they move into the pages.
  if (w.step_flushed) FlushKeys(layer);
  if (w.residual_values > format_.residual_length) SlideValue(layer);
  return out;
}

DecodePlan QuantizedSequenceCache::BasePlan() const {
  DecodePlan plan;
  plan.pool = pool_.get();
  plan.shape = shape_;
  plan.format = format_;
  plan.tokens_per_page = tokens_per_page_;
  plan.slots_per_page = slots_per_page_;
  plan.data_pages = data_pages_.pages();
  plan.residual_pages = residual_pages_.pages();
  if (state_) plan.state_pages = state_->page_ids();
  return plan;
}

bool QuantizedSequenceCache::PlanBatchedDecode(DecodePlan* plan) const {
  if (!shape_.device.is_cuda() || !prompt_complete_ || length_ + 1 > reserved_) return false;
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    if (attended_[layer] != length_ || windows_[layer].tokens() != length_) return false;
  }
  const WindowState& w = windows_[0];  // every layer's windows move in lockstep
  const int64_t r = format_.residual_length;
  *plan = BasePlan();
  plan->tokens = length_ + 1;
  plan->quantized_keys = w.quantized_keys;
  plan->quantized_values = w.quantized_values;
  plan->key_slot = w.residual_keys;
  plan->flush_keys = w.residual_keys + 1 == r;
  plan->slide_value = w.residual_values + 1 > r;
  // Past the reservation the per-sequence path throws with the full message.
  if (plan->flush_keys && w.quantized_keys + r > quantized_.capacity()) return false;
  if (plan->slide_value && w.quantized_values + 1 > quantized_.capacity()) return false;
  return true;
}

void QuantizedSequenceCache::CompleteBatchedDecode() {
  const int64_t r = format_.residual_length;
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    WindowState& w = windows_[layer];
    attended_[layer] = w.tokens() + 1;
    ++w.residual_keys;
    ++w.residual_values;
    // As Decode: the step read the keys in full precision, then they moved into the pages.
    w.step_quantized_keys = w.quantized_keys;
    w.step_residual_keys = w.residual_keys;
    w.step_flushed = w.residual_keys == r;
    if (w.step_flushed) {
      w.quantized_keys += r;
      w.residual_keys = 0;
      ++w.key_flushes;
    }
    if (w.residual_values > r) {
      ++w.quantized_values;
      --w.residual_values;
    }
  }
}

void QuantizedSequenceCache::FlushKeys(int64_t layer) {
  WindowState& w = windows_[layer];
  const int64_t r = format_.residual_length;
  KernelQuantization flush;
  flush.source_pages = residual_pages_.pages();
  flush.first_layer = layer;
  flush.layers = 1;
  flush.key_groups = r / format_.group_size;
  flush.key_first_token = w.quantized_keys;
  if (!(shape_.device.is_cuda() && QuantizeWithKernels(BasePlan(), flush))) {
    const at::Tensor block = residual_.Read(layer, KvPart::kKeys, 0, r);
    quantized_.WriteKeys(layer, w.quantized_keys, QuantizeKeyBlock(block, format_, Compensation(layer)));
  }
  w.quantized_keys += r;
  w.residual_keys = 0;
  ++w.key_flushes;
}

void QuantizedSequenceCache::SlideValue(int64_t layer) {
  WindowState& w = windows_[layer];
  KernelQuantization slide;
  slide.source_pages = residual_pages_.pages();
  slide.first_layer = layer;
  slide.layers = 1;
  slide.value_tokens = 1;
  slide.value_source_slot = w.quantized_values;
  slide.value_first_token = w.quantized_values;
  slide.value_ring = ResidualSlots(format_);
  if (!(shape_.device.is_cuda() && QuantizeWithKernels(BasePlan(), slide))) {
    const at::Tensor oldest = ReadValueRing(layer, w.quantized_values, 1);
    quantized_.WriteValues(layer, w.quantized_values, QuantizeValueTokens(oldest, format_));
  }
  ++w.quantized_values;
  --w.residual_values;
}

void QuantizedSequenceCache::WriteValueRing(int64_t layer, int64_t first_token, const at::Tensor& values) {
  const int64_t ring = ResidualSlots(format_), count = values.size(1);
  const int64_t slot = first_token % ring, head = std::min(count, ring - slot);
  residual_.Write(layer, KvPart::kValues, slot, values.narrow(1, 0, head));
  if (count > head) residual_.Write(layer, KvPart::kValues, 0, values.narrow(1, head, count - head));
}

at::Tensor QuantizedSequenceCache::ReadValueRing(int64_t layer, int64_t first_token, int64_t count) const {
  const int64_t ring = ResidualSlots(format_);
  const int64_t slot = first_token % ring, head = std::min(count, ring - slot);
  at::Tensor first = residual_.Read(layer, KvPart::kValues, slot, head);
  if (count == head) return first;
  return at::cat({first, residual_.Read(layer, KvPart::kValues, 0, count - head)}, 1);
}

void QuantizedSequenceCache::Commit(int64_t num_tokens, bool prompt_complete) {
  TORCH_CHECK(num_tokens > 0, "Commit: num_tokens must be > 0, got ", num_tokens);
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    TORCH_CHECK(attended_[layer] == length_ + num_tokens, "Commit(", num_tokens, "): layer ", layer, " holds ",
                attended_[layer], " tokens, expected ", length_ + num_tokens);
  }
  TORCH_CHECK(prompt_complete || !prompt_complete_, "Commit: a prompt chunk after the prompt ended");
  length_ += num_tokens;
  if (!prompt_complete_ && prompt_complete) CompletePrompt();
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
  quantized_ = QuantizedTokenStore(data_pages_, shape_, format_, tokens_per_page_);
  if (!prompt_complete_) staging_ = Fp16SlotStore(staging_pages_, shape_, slots_per_page_);
  reserved_ = total_tokens;
  return absl::OkStatus();
}

}  // namespace squat::kv
