// Quantized paged cache of one sequence (kivi, squat, squat-post): packed K/V pages, fp16
// residual windows in pages of the same pool, and the SQuat state (spec 2, 3, 5). KIVI is the
// same machinery without compensation. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"
#include "kvcache/squat_state.h"

namespace squat::kv {

// Where one layer's tokens live (spec 5.1), plus what its last Attend did.
struct WindowState {
  int64_t quantized_keys = 0;    // N_q (a multiple of R)
  int64_t residual_keys = 0;     // |Kr|: tokens [N_q, N_q + |Kr|) in residual key slots 0..
  int64_t quantized_values = 0;  // N_v
  int64_t residual_values = 0;   // |Vr|: tokens [N_v, N_v + |Vr|), token n in ring slot n mod (R+1)
  int64_t key_flushes = 0;       // decode steps that moved R residual keys into the pages
  // Last Attend: how many quantized and full-precision keys its scores read, and whether it
  // ended with a key flush.
  int64_t step_quantized_keys = 0;
  int64_t step_residual_keys = 0;
  bool step_flushed = false;

  int64_t tokens() const { return quantized_keys + residual_keys; }
};

class QuantizedSequenceCache final : public SequenceKvCache {
 public:
  // `state` is null for kivi; `owns_state` says whether its pages count as this sequence's
  // (false for a subspace shared through the manager). inv_freq is needed by squat (pre).
  QuantizedSequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t max_tokens,
                         int64_t tokens_per_page, int64_t residual_slots_per_page, PageLease data,
                         PageLease residual, std::shared_ptr<SquatState> state, bool owns_state);

  int64_t length() const override { return length_; }
  const KvFormat& format() const override { return format_; }
  at::Tensor Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre, const at::Tensor& k_rot,
                    const at::Tensor& v) override;
  void Commit(int64_t num_tokens) override;
  int64_t pages() const override;

  // Test-only views of the internals.
  const WindowState& window(int64_t layer) const { return windows_[layer]; }
  const QuantizedTokenStore& quantized_store() const { return quantized_; }
  const Fp16SlotStore& residual_store() const { return residual_; }
  const PageLease& data_pages() const { return data_pages_; }

 private:
  at::Tensor Prefill(int64_t layer, const at::Tensor& q_rot, const at::Tensor& keys, const at::Tensor& k_rot,
                     const at::Tensor& v);
  at::Tensor Decode(int64_t layer, const at::Tensor& q_rot, const at::Tensor& keys, const at::Tensor& v);
  std::vector<std::vector<at::Tensor>> Compensation(int64_t layer) const;
  void FlushKeys(int64_t layer);
  void SlideValue(int64_t layer);
  // Value ring: tokens [first, first + n) <-> slots t mod (R + 1).
  void WriteValueRing(int64_t layer, int64_t first_token, const at::Tensor& values);
  at::Tensor ReadValueRing(int64_t layer, int64_t first_token, int64_t count) const;

  KvModelShape shape_;
  KvFormat format_;
  int64_t max_tokens_;
  PageLease data_pages_;
  PageLease residual_pages_;
  QuantizedTokenStore quantized_;
  Fp16SlotStore residual_;
  std::shared_ptr<SquatState> state_;
  bool owns_state_;
  int64_t length_ = 0;
  std::vector<WindowState> windows_;
};

}  // namespace squat::kv
