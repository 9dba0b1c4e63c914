#include "kvcache/quantized_sequence_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "kvcache/attend_inputs.h"
#include "kvcache/dense_attention.h"
#include "kvcache/page_geometry.h"
#include "kvcache/quantized_blocks.h"
#include "kvcache/rope_at.h"

namespace squat::kv {

QuantizedSequenceCache::QuantizedSequenceCache(const KvModelShape& shape, const KvFormat& format,
                                               int64_t max_tokens, int64_t tokens_per_page,
                                               int64_t residual_slots_per_page, PageLease data, PageLease residual,
                                               std::shared_ptr<SquatState> state, bool owns_state)
    : shape_(shape), format_(format), max_tokens_(max_tokens), data_pages_(std::move(data)),
      residual_pages_(std::move(residual)), quantized_(data_pages_, shape, format, tokens_per_page),
      residual_(residual_pages_, shape, residual_slots_per_page), state_(std::move(state)),
      owns_state_(owns_state), windows_(shape.num_layers) {
  TORCH_CHECK(residual_.capacity() >= ResidualSlots(format), "residual lease too small");
  TORCH_CHECK(HasSquatState(format.method) == (state_ != nullptr), "SQuat state given for the wrong format");
}

int64_t QuantizedSequenceCache::pages() const {
  return data_pages_.size() + residual_pages_.size() + (owns_state_ ? state_->pages() : 0);
}

at::Tensor QuantizedSequenceCache::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                                          const at::Tensor& k_rot, const at::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < shape_.num_layers, "Attend: layer ", layer, " out of range");
  const bool pre_rope = format_.method == KvMethod::kSquatPre;
  const int64_t tokens = CheckAttendInputs(shape_, pre_rope, q_rot, k_pre, k_rot, v);
  TORCH_CHECK(windows_[layer].tokens() == length_, "Attend: layer ", layer, " attended twice before Commit");
  TORCH_CHECK(length_ + tokens <= max_tokens_, "Attend: ", length_ + tokens,
              " tokens exceed the sequence's reserved ", max_tokens_);
  const at::Tensor& keys = pre_rope ? k_pre : k_rot;
  if (length_ == 0) return Prefill(layer, q_rot, keys, k_rot, v);
  TORCH_CHECK(tokens == 1, "Attend: after the prompt, a ", KvMethodName(format_.method),
              " cache takes one token per step, got ", tokens);
  return Decode(layer, q_rot, keys, v);
}

std::vector<std::vector<at::Tensor>> QuantizedSequenceCache::Compensation(int64_t layer) const {
  if (!state_) return {};  // KIVI
  return state_->Load(layer);
}

at::Tensor QuantizedSequenceCache::Prefill(int64_t layer, const at::Tensor& q_rot, const at::Tensor& keys,
                                           const at::Tensor& k_rot, const at::Tensor& v) {
  const int64_t tokens = q_rot.size(1), r = format_.residual_length;
  // Quantization never affects the prompt's own attention (spec 3.1).
  at::Tensor out = CausalAttention(q_rot, k_rot, v, /*start=*/0);

  // A shared state is built by the first prompt that reaches this layer and then kept.
  if (state_ && !state_->ready(layer)) state_->Build(layer, q_rot);

  WindowState& w = windows_[layer];
  w.quantized_keys = tokens - tokens % r;
  w.residual_keys = tokens - w.quantized_keys;
  if (w.quantized_keys > 0) {
    quantized_.WriteKeys(layer, 0, QuantizeKeyBlock(keys.narrow(1, 0, w.quantized_keys), format_,
                                                    Compensation(layer)));
  }
  residual_.Write(layer, KvPart::kKeys, 0, keys.narrow(1, w.quantized_keys, w.residual_keys));

  w.quantized_values = std::max<int64_t>(0, tokens - r);
  w.residual_values = tokens - w.quantized_values;
  if (w.quantized_values > 0) {
    quantized_.WriteValues(layer, 0, QuantizeValueTokens(v.narrow(1, 0, w.quantized_values), format_));
  }
  WriteValueRing(layer, w.quantized_values, v.narrow(1, w.quantized_values, w.residual_values));

  w.step_quantized_keys = 0;
  w.step_residual_keys = tokens;
  w.step_flushed = false;
  return out;
}

at::Tensor QuantizedSequenceCache::Decode(int64_t layer, const at::Tensor& q_rot, const at::Tensor& key,
                                          const at::Tensor& v) {
  WindowState& w = windows_[layer];
  const int64_t position = w.tokens();
  residual_.Write(layer, KvPart::kKeys, w.residual_keys, key);
  ++w.residual_keys;
  WriteValueRing(layer, position, v);
  ++w.residual_values;

  // CPU reference path: dequantize every quantized token, then dense attention.
  const at::ScalarType dtype = shape_.compute_dtype;
  std::vector<at::Tensor> key_parts, value_parts;
  if (w.quantized_keys > 0) {
    key_parts.push_back(DequantizeKeyBlock(quantized_.ReadKeys(layer, w.quantized_keys), format_).to(dtype));
  }
  key_parts.push_back(residual_.Read(layer, KvPart::kKeys, 0, w.residual_keys));
  at::Tensor keys = at::cat(key_parts, 1);
  if (format_.method == KvMethod::kSquatPre) keys = ApplyRopeAt(keys, 0, shape_.inv_freq);
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

void QuantizedSequenceCache::FlushKeys(int64_t layer) {
  WindowState& w = windows_[layer];
  const int64_t r = format_.residual_length;
  const at::Tensor block = residual_.Read(layer, KvPart::kKeys, 0, r);
  quantized_.WriteKeys(layer, w.quantized_keys, QuantizeKeyBlock(block, format_, Compensation(layer)));
  w.quantized_keys += r;
  w.residual_keys = 0;
  ++w.key_flushes;
}

void QuantizedSequenceCache::SlideValue(int64_t layer) {
  WindowState& w = windows_[layer];
  const at::Tensor oldest = ReadValueRing(layer, w.quantized_values, 1);
  quantized_.WriteValues(layer, w.quantized_values, QuantizeValueTokens(oldest, format_));
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

void QuantizedSequenceCache::Commit(int64_t num_tokens) {
  for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
    TORCH_CHECK(windows_[layer].tokens() == length_ + num_tokens, "Commit(", num_tokens, "): layer ", layer,
                " holds ", windows_[layer].tokens(), " tokens, expected ", length_ + num_tokens);
  }
  length_ += num_tokens;
}

}  // namespace squat::kv
