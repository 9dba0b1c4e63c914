// One engine step as data: the rows fed to the model (token, position, which logits are
// wanted) and, per sequence, what its cache planned (prefill chunk or decode row, page tables,
// window counts, quantization work). It lives in persistent buffers of fixed capacity (host,
// and on CUDA a device copy) sized at start: building a step allocates nothing on the device
// and uploads once. The model reads tokens / positions / logit rows; the attention backend
// reads the rest. Engine thread only; internal to kvcache/ and runtime/ (includes ATen).
//
//   batch.Begin();  batch.Add(...) per sequence;  batch.Seal();        // plan + one upload
//   backend.BeginStep(batch);  model layers: backend.Attend(layer, batch, ...) once each;
//   batch.Finish(backend);                                            // quantization + commit
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/page_layout.h"
#include "kernels/decode_attention.h"
#include "kernels/page_writes.h"
#include "kvcache/kv_cache.h"

namespace squat::kv {

struct StepCapacity {
  int64_t max_rows = 0;       // token rows per step (--max-num-batched-tokens)
  int64_t max_sequences = 0;  // sequences per step (--max-num-seqs)
  int64_t max_page_ids = 0;   // page ids of the step's tables (KvCacheManager::StepPageIds)
};

// A run of page ids in the step's page table.
struct PageSpan {
  int32_t offset = 0, count = 0;
};

// Quantization work of one sequence for every layer (kernels::KeyTask / ValueTask with page
// counts, which the reference backend needs).
struct KeyWork {
  PageSpan src, dst, state;  // state.count == 0: KIVI (no compensation)
  int32_t src_first_slot = 0, dst_first_token = 0, num_groups = 0;
};
struct ValueWork {
  PageSpan src, dst;
  int32_t src_first_slot = 0, ring = 0, dst_first_token = 0, num_tokens = 0;
};

// One sequence's part of a step, as its cache planned it (SequenceKvCache::Plan).
struct SequenceStep {
  SequenceKvCache* cache = nullptr;
  int32_t group = -1;          // its format group (StepGroup)
  int64_t row_begin = 0;       // rows [row_begin, row_begin + num_rows) of the batch
  int64_t num_rows = 0;
  int64_t start = 0;           // tokens cached before the step: row i is at position start + i
  bool prompt_complete = true;  // as asked by the caller
  // Decode: one row through paged decode attention (it appends its key and value). Otherwise a
  // prefill chunk: its rows go to `slots` and attention is full precision over them.
  bool decode = false;
  bool prompt_ends = false;       // a quantized prompt is quantized into pages after this step
  bool collects_queries = false;  // prefill rows' queries feed the SQuat Gram
  PageSpan slots;                 // prefill: full-precision slot pages (fp16 data, or staging)
  // Decode: the pages and window counts the kernels read (kernels::DecodeSequence).
  PageSpan data, residual;
  int64_t tokens = 0;            // N, this step's token included
  int64_t quantized_keys = 0;    // N_q
  int64_t quantized_values = 0;  // N_v (value token n >= N_v is in ring slot n mod (R + 1))
  int64_t key_slot = 0;          // residual slot of the new key (fp16: N - 1)
  bool has_key_work = false, has_value_work = false;
  KeyWork key_work;
  ValueWork value_work;
};

// The sequences of one format in a step: one decode launch per layer and one launch per kind of
// quantization work for all of them.
struct StepGroup {
  KvFormat format;
  kernels::PoolLayout layout;
  bool quantized = false, pre_rope = false;
  std::vector<int32_t> decode;  // its decode sequences (indices into sequences())
  int64_t max_decode_tokens = 0;
  // Device records (int32 word offsets into the buffer) of its decode sequences and tasks.
  int64_t decode_at = 0, key_tasks_at = 0, value_tasks_at = 0;
  int32_t num_key_tasks = 0, key_blocks = 0, num_value_tasks = 0, value_blocks = 0;
};

// What a sequence cache adds to the step's tables while it plans.
class StepPlanner {
 public:
  virtual ~StepPlanner() = default;
  virtual PageSpan AddPages(const std::vector<int64_t>& pages) = 0;
};

class StepBatch final : public StepPlanner {
 public:
  // Buffers for steps of `kv`'s pool (on its device) up to `capacity`.
  static absl::StatusOr<std::unique_ptr<StepBatch>> Create(KvCacheManager& kv, StepCapacity capacity);
  ~StepBatch() override;

  // Starts a new step (waits until the previous upload has left the host buffer).
  void Begin();
  // Adds `num_tokens` rows of one sequence (token ids tokens[0..num_tokens), at positions
  // cache->length() ...); `logits`: the last row's logits are wanted (every row's with
  // all_logits). Throws, leaving the caches unchanged, when the sequence cannot take the step
  // or the capacity is exceeded.
  void Add(SequenceKvCache* cache, const int32_t* tokens, int64_t num_tokens, bool prompt_complete, bool logits,
           bool all_logits = false);
  // Lays out the groups' records and uploads the step (one copy to the device).
  void Seal();
  // After the layers: the sequences' PrepareTasks, the backend's quantization work, Commit.
  void Finish(AttentionBackend& backend);

  int64_t num_rows() const { return rows_; }
  int64_t num_logits() const { return logits_; }
  // Views of the uploaded step (device int32): token ids and positions [rows], and the rows
  // whose logits are wanted [num_logits], in Add order.
  at::Tensor tokens() const;
  at::Tensor positions() const;
  at::Tensor logit_rows() const;
  int64_t max_position() const { return max_position_; }  // largest position of a row

  const std::vector<SequenceStep>& sequences() const { return sequences_; }
  const std::vector<StepGroup>& groups() const { return groups_; }
  // Page ids: host (int32, for the reference backend) and device (for the kernels and gathers).
  const int32_t* host_page_ids() const;
  at::Tensor page_ids() const;  // device int32 [used]
  const int32_t* device_page_ids() const { return device_words(page_ids_at_); }
  // Device words of the buffer from word `offset` (the groups' records).
  const int32_t* device_words(int64_t offset) const;
  // Where prefill rows go: int32 triples (row, page id, slot) [num_prefill_rows], the rows of
  // pre-RoPE formats (which store k_pre; the others store k_rot) first.
  const int32_t* host_prefill_slots() const { return host() + prefill_slots_at_; }
  const int32_t* device_prefill_slots() const { return device_words(prefill_slots_at_); }
  int64_t num_prefill_rows() const { return static_cast<int64_t>(prefill_pre_.size() + prefill_post_.size()) / 3; }
  int64_t num_prefill_pre_rope() const { return static_cast<int64_t>(prefill_pre_.size()) / 3; }
  const KvModelShape& shape() const { return kv_.shape(); }
  const PagePool& pool() const { return kv_.pool(); }

  PageSpan AddPages(const std::vector<int64_t>& pages) override;

 private:
  StepBatch(KvCacheManager& kv, StepCapacity capacity);
  int32_t GroupOf(const KvFormat& format);
  int32_t* host() const;

  KvCacheManager& kv_;
  StepCapacity capacity_;
  // Word offsets of the regions (fixed for the buffer's lifetime).
  int64_t tokens_at_ = 0, positions_at_ = 0, logit_rows_at_ = 0, prefill_slots_at_ = 0, records_at_ = 0,
          page_ids_at_ = 0, words_ = 0;
  at::Tensor host_;    // int32 [words_] (pinned on CUDA)
  at::Tensor device_;  // int32 [words_] on the pool's device (== host_ on the CPU)
  void* upload_event_ = nullptr;
  bool sealed_ = false;
  int64_t rows_ = 0, logits_ = 0, page_ids_ = 0, max_position_ = -1;
  std::vector<int32_t> prefill_pre_, prefill_post_;  // triples until Seal
  int64_t uploaded_words_ = 0;
  std::vector<SequenceStep> sequences_;
  std::vector<StepGroup> groups_;
};

}  // namespace squat::kv
