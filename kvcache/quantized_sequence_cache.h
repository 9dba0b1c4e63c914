// Quantized paged cache of one sequence (kivi, squat, squat-post): packed K/V pages, fp16
// residual windows in pages of the same pool, and the SQuat state (spec 2, 3, 5). KIVI is the
// same machinery without compensation. While the prompt is incomplete (chunked prefill), its
// keys and values wait in full-precision staging pages and the query Gram accumulates; the
// prompt is quantized at once when it completes (spec 3, pitfall 14). The residual-window state
// machine of spec 5.1 lives here, once: Plan says what a step does (where the new key and value
// go, whether the key window flushes and a value slides out), the attention backend does it,
// and Commit advances the windows. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"
#include "kvcache/query_gram.h"
#include "kvcache/squat_state.h"

namespace squat::kv {

// Where a sequence's tokens live (spec 5.1), the same for every layer (the windows of all
// layers move in lockstep), plus what its last step did.
struct WindowState {
  int64_t quantized_keys = 0;    // N_q (a multiple of R)
  int64_t residual_keys = 0;     // |Kr|: tokens [N_q, N_q + |Kr|) in residual key slots 0..
  int64_t quantized_values = 0;  // N_v
  int64_t residual_values = 0;   // |Vr|: tokens [N_v, N_v + |Vr|), token n in ring slot n mod (R+1)
  int64_t key_flushes = 0;       // decode steps that moved R residual keys into the pages
  // Last step: how many quantized and full-precision keys its scores read, and whether it
  // ended with a key flush.
  int64_t step_quantized_keys = 0;
  int64_t step_residual_keys = 0;
  bool step_flushed = false;

  int64_t tokens() const { return quantized_keys + residual_keys; }
};

// A quantized sequence's pages by purpose, all from one pool. staging, gram and
// pending_queries are held only until the prompt completes (gram and pending_queries only when
// the sequence may have to build its SQuat subspace).
struct QuantizedSequenceLeases {
  PageLease data, residual, staging, gram, pending_queries;
};

class QuantizedSequenceCache final : public SequenceKvCache {
 public:
  // `state` is null for kivi. `buildable` is the same object when this sequence may build its
  // layers (its own subspace, or a shared one not built yet), null when it is reused.
  QuantizedSequenceCache(const KvModelShape& shape, const KvFormat& format, int64_t reserved_tokens,
                         std::shared_ptr<PagePool> pool, QuantizedSequenceLeases leases,
                         std::shared_ptr<const SquatSubspace> state, std::shared_ptr<SquatSubspace> buildable);

  int64_t length() const override { return length_; }
  const KvFormat& format() const override { return format_; }
  bool prompt_complete() const override { return prompt_complete_; }
  absl::Status Reserve(int64_t total_tokens) override;
  int64_t reserved_tokens() const override { return reserved_; }
  std::shared_ptr<const SquatSubspace> subspace() const override;
  int64_t pages() const override;

  void Plan(int64_t num_tokens, bool prompt_complete, StepPlanner& planner, SequenceStep& step) const override;
  void AddPromptQueries(int64_t layer, const at::Tensor& q_rot) override;
  void PrepareTasks(const SequenceStep& step) override;
  void Commit(const SequenceStep& step) override;

  // Test-only views of the internals.
  const WindowState& window() const { return window_; }
  QuantizedTokenStore quantized_store() const;
  const Fp16SlotStore& residual_store() const { return residual_; }
  const PageLease& data_pages() const { return data_pages_; }
  int64_t staging_pages() const { return staging_pages_.size() + gram_.pages(); }

 private:
  // The staged prompt's tail moves into the windows; staging and Gram pages go back.
  void CompletePrompt();
  // Value ring: tokens [first, first + n) <-> slots t mod (R + 1).
  void WriteValueRing(int64_t layer, int64_t first_token, const at::Tensor& values);
  bool pre_rope() const { return format_.method == KvMethod::kSquatPre; }

  KvModelShape shape_;
  KvFormat format_;
  int64_t reserved_;
  std::shared_ptr<PagePool> pool_;
  int64_t tokens_per_page_, slots_per_page_;  // quantized tokens / full-precision slots per page
  PageLease data_pages_, residual_pages_, staging_pages_;
  Fp16SlotStore residual_, staging_;
  QueryGramAccumulator gram_;
  std::shared_ptr<const SquatSubspace> state_;
  std::shared_ptr<SquatSubspace> buildable_;
  bool owns_state_;  // its pages count as this sequence's (not the manager's shared subspace)
  int64_t length_ = 0;
  bool prompt_complete_ = false;
  WindowState window_;
};

}  // namespace squat::kv
