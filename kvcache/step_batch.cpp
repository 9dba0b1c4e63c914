#include "kvcache/step_batch.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvcache/attention_backend.h"
#include "kvcache/page_geometry.h"
#include "kvcache/page_pool.h"

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/cuda_runtime.h"
#endif

namespace squat::kv {
namespace {

constexpr int64_t kRecordWords = 7;  // DecodeSequence, KeyTask and ValueTask are 7 int32 each
static_assert(sizeof(kernels::DecodeSequence) == kRecordWords * 4 && sizeof(kernels::KeyTask) == kRecordWords * 4 &&
                  sizeof(kernels::ValueTask) == kRecordWords * 4,
              "step records are 7 int32 words");

bool SameLayout(const KvFormat& a, const KvFormat& b) {
  if (a.method != b.method) return false;
  if (!IsQuantized(a.method)) return true;
  return a.k_bits == b.k_bits && a.v_bits == b.v_bits && a.group_size == b.group_size &&
         a.residual_length == b.residual_length && a.block_size == b.block_size;
}

template <typename T>
void PutRecord(int32_t* words, const T& record) {
  std::memcpy(words, &record, sizeof(T));
}

}  // namespace

absl::StatusOr<std::unique_ptr<StepBatch>> StepBatch::Create(KvCacheManager& kv, StepCapacity capacity) {
  if (capacity.max_rows <= 0 || capacity.max_sequences <= 0 || capacity.max_page_ids <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("step buffers: capacities must be > 0, got ", capacity.max_rows,
                                                   " rows, ", capacity.max_sequences, " sequences, ",
                                                   capacity.max_page_ids, " page ids"));
  }
  std::unique_ptr<StepBatch> batch(new StepBatch(kv, capacity));
  const at::Device device = kv.pool().device();
  try {
    auto options = at::TensorOptions().dtype(at::kInt);
    batch->host_ = at::empty({batch->words_}, options.pinned_memory(device.is_cuda()));
    batch->device_ = device.is_cuda() ? at::empty({batch->words_}, options.device(device)) : batch->host_;
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("step buffers: cannot allocate ", batch->words_ * 4,
                                                     " bytes: ", e.what_without_backtrace()));
  }
#ifdef SQUAT_HAVE_CUDA_KERNELS
  if (device.is_cuda()) batch->upload_event_ = kernels::EventCreate();
#endif
  return batch;
}

StepBatch::StepBatch(KvCacheManager& kv, StepCapacity capacity) : kv_(kv), capacity_(capacity) {
  tokens_at_ = 0;
  positions_at_ = tokens_at_ + capacity.max_rows;
  logit_rows_at_ = positions_at_ + capacity.max_rows;
  prefill_slots_at_ = logit_rows_at_ + capacity.max_rows;
  records_at_ = prefill_slots_at_ + 3 * capacity.max_rows;
  page_ids_at_ = records_at_ + 3 * kRecordWords * capacity.max_sequences;
  words_ = page_ids_at_ + capacity.max_page_ids;
  sequences_.reserve(capacity.max_sequences);
  prefill_pre_.reserve(3 * capacity.max_rows);
  prefill_post_.reserve(3 * capacity.max_rows);
}

StepBatch::~StepBatch() {
#ifdef SQUAT_HAVE_CUDA_KERNELS
  if (upload_event_ != nullptr) {
    kernels::EventSynchronize(upload_event_);  // the copy may still read the pinned buffer
    kernels::EventDestroy(upload_event_);
  }
#endif
}

int32_t* StepBatch::host() const { return host_.data_ptr<int32_t>(); }

void StepBatch::Begin() {
#ifdef SQUAT_HAVE_CUDA_KERNELS
  if (upload_event_ != nullptr && uploaded_words_ > 0) {
    const int error = kernels::EventSynchronize(upload_event_);
    TORCH_CHECK(error == 0, "step buffers: waiting for the last upload failed: ", kernels::ErrorString(error));
  }
#endif
  sealed_ = false;
  rows_ = logits_ = page_ids_ = 0;
  prefill_pre_.clear();
  prefill_post_.clear();
  max_position_ = -1;
  sequences_.clear();
  groups_.clear();
}

PageSpan StepBatch::AddPages(const std::vector<int64_t>& pages) {
  TORCH_CHECK(page_ids_ + static_cast<int64_t>(pages.size()) <= capacity_.max_page_ids, "step: more than ",
              capacity_.max_page_ids, " page ids in one step");
  PageSpan span;
  span.offset = static_cast<int32_t>(page_ids_);
  span.count = static_cast<int32_t>(pages.size());
  int32_t* ids = host() + page_ids_at_ + page_ids_;
  for (size_t i = 0; i < pages.size(); ++i) ids[i] = static_cast<int32_t>(pages[i]);
  page_ids_ += static_cast<int64_t>(pages.size());
  return span;
}

int32_t StepBatch::GroupOf(const KvFormat& format) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (SameLayout(groups_[g].format, format)) return static_cast<int32_t>(g);
  }
  StepGroup group;
  group.format = format;
  group.quantized = IsQuantized(format.method);
  group.pre_rope = format.method == KvMethod::kSquatPre;
  group.layout = PoolLayoutFor(shape(), pool(), format);
  groups_.push_back(std::move(group));
  return static_cast<int32_t>(groups_.size() - 1);
}

void StepBatch::Add(SequenceKvCache* cache, const int32_t* tokens, int64_t num_tokens, bool prompt_complete,
                    bool logits, bool all_logits) {
  TORCH_CHECK(!sealed_, "step: Add after Seal (call Begin first)");
  TORCH_CHECK(cache != nullptr && num_tokens > 0, "step: every sequence needs a cache and at least one token");
  TORCH_CHECK(static_cast<int64_t>(sequences_.size()) < capacity_.max_sequences, "step: more than ",
              capacity_.max_sequences, " sequences in one step");
  TORCH_CHECK(rows_ + num_tokens <= capacity_.max_rows, "step: more than ", capacity_.max_rows,
              " token rows in one step");
  const int64_t start = cache->length(), positions = shape().rope_table.size(0);
  TORCH_CHECK(start + num_tokens <= positions, "step: position ", start + num_tokens - 1,
              " is beyond the model's RoPE table of ", positions, " positions");
  SequenceStep step;
  step.cache = cache;
  step.row_begin = rows_;
  step.num_rows = num_tokens;
  step.start = start;
  step.prompt_complete = prompt_complete;
  const int64_t page_ids_before = page_ids_;
  try {
    cache->Plan(num_tokens, prompt_complete, *this, step);
  } catch (...) {
    page_ids_ = page_ids_before;
    throw;
  }
  step.group = GroupOf(cache->format());

  int32_t* words = host();
  for (int64_t i = 0; i < num_tokens; ++i) {
    words[tokens_at_ + rows_ + i] = tokens[i];
    words[positions_at_ + rows_ + i] = static_cast<int32_t>(start + i);
  }
  if (all_logits) {
    for (int64_t i = 0; i < num_tokens; ++i) words[logit_rows_at_ + logits_++] = static_cast<int32_t>(rows_ + i);
  } else if (logits) {
    words[logit_rows_at_ + logits_++] = static_cast<int32_t>(rows_ + num_tokens - 1);
  }
  if (step.decode) {
    StepGroup& group = groups_[step.group];
    group.decode.push_back(static_cast<int32_t>(sequences_.size()));
    group.max_decode_tokens = std::max(group.max_decode_tokens, step.tokens);
  } else {
    const StepGroup& group = groups_[step.group];
    const int64_t spp = group.layout.slots_per_page;
    const int32_t* ids = words + page_ids_at_ + step.slots.offset;
    std::vector<int32_t>& triples = group.pre_rope ? prefill_pre_ : prefill_post_;
    for (int64_t i = 0; i < num_tokens; ++i) {
      const int64_t position = start + i;
      triples.insert(triples.end(), {static_cast<int32_t>(rows_ + i), ids[position / spp],
                                     static_cast<int32_t>(position % spp)});
    }
  }
  max_position_ = std::max(max_position_, start + num_tokens - 1);
  rows_ += num_tokens;
  sequences_.push_back(step);
}

void StepBatch::Seal() {
  TORCH_CHECK(!sealed_, "step: sealed twice");
  int32_t* words = host();
  std::copy(prefill_pre_.begin(), prefill_pre_.end(), words + prefill_slots_at_);
  std::copy(prefill_post_.begin(), prefill_post_.end(), words + prefill_slots_at_ + prefill_pre_.size());
  int64_t at = records_at_;
  const int32_t layers = static_cast<int32_t>(shape().num_layers);
  for (StepGroup& group : groups_) {
    group.decode_at = at;
    for (int32_t index : group.decode) {
      const SequenceStep& s = sequences_[index];
      kernels::DecodeSequence record;
      record.row = static_cast<int32_t>(s.row_begin);
      record.data_pages = s.data.offset;
      record.residual_pages = s.residual.offset;
      record.tokens = static_cast<int32_t>(s.tokens);
      record.quantized_keys = static_cast<int32_t>(s.quantized_keys);
      record.quantized_values = static_cast<int32_t>(s.quantized_values);
      record.key_slot = static_cast<int32_t>(s.key_slot);
      PutRecord(words + at, record);
      at += kRecordWords;
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    StepGroup& group = groups_[g];
    group.key_tasks_at = at;
    for (const SequenceStep& s : sequences_) {
      if (s.group != static_cast<int32_t>(g) || !s.has_key_work) continue;
      const KeyWork& w = s.key_work;
      kernels::KeyTask task;
      task.src_pages = w.src.offset;
      task.src_first_slot = w.src_first_slot;
      task.dst_pages = w.dst.offset;
      task.dst_first_token = w.dst_first_token;
      task.state_pages = w.state.count > 0 ? w.state.offset : -1;
      task.num_groups = w.num_groups;
      task.first_block = group.key_blocks;
      PutRecord(words + at, task);
      at += kRecordWords;
      ++group.num_key_tasks;
      group.key_blocks += w.num_groups * layers;
    }
    group.value_tasks_at = at;
    for (const SequenceStep& s : sequences_) {
      if (s.group != static_cast<int32_t>(g) || !s.has_value_work) continue;
      const ValueWork& w = s.value_work;
      kernels::ValueTask task;
      task.src_pages = w.src.offset;
      task.src_first_slot = w.src_first_slot;
      task.ring = w.ring;
      task.dst_pages = w.dst.offset;
      task.dst_first_token = w.dst_first_token;
      task.num_tokens = w.num_tokens;
      task.first_block = group.value_blocks;
      PutRecord(words + at, task);
      at += kRecordWords;
      ++group.num_value_tasks;
      group.value_blocks += w.num_tokens * layers;
    }
  }
  TORCH_CHECK(at <= page_ids_at_, "step: records overflow their region");
  // One copy: every region up to the last page id used.
  uploaded_words_ = page_ids_at_ + page_ids_;
  if (!device_.is_same(host_)) {
#ifdef SQUAT_HAVE_CUDA_KERNELS
    int error = kernels::CopyToDevice(device_.data_ptr<int32_t>(), host_.data_ptr<int32_t>(),
                                      static_cast<size_t>(uploaded_words_) * 4, nullptr);
    if (error == 0) error = kernels::EventRecord(upload_event_, nullptr);
    TORCH_CHECK(error == 0, "step buffers: upload failed: ", kernels::ErrorString(error));
#else
    device_.narrow(0, 0, uploaded_words_).copy_(host_.narrow(0, 0, uploaded_words_));
#endif
  }
  sealed_ = true;
}

void StepBatch::Finish(AttentionBackend& backend) {
  TORCH_CHECK(sealed_, "step: Finish before Seal");
  for (const SequenceStep& s : sequences_) s.cache->PrepareTasks(s);
  backend.RunTasks(*this);
  for (const SequenceStep& s : sequences_) s.cache->Commit(s);
  sealed_ = false;
  sequences_.clear();  // the step is over: nothing may run it twice
  groups_.clear();
}

at::Tensor StepBatch::tokens() const { return device_.narrow(0, tokens_at_, rows_); }
at::Tensor StepBatch::positions() const { return device_.narrow(0, positions_at_, rows_); }
at::Tensor StepBatch::logit_rows() const { return device_.narrow(0, logit_rows_at_, logits_); }
const int32_t* StepBatch::host_page_ids() const { return host() + page_ids_at_; }
at::Tensor StepBatch::page_ids() const { return device_.narrow(0, page_ids_at_, page_ids_); }
const int32_t* StepBatch::device_words(int64_t offset) const { return device_.data_ptr<int32_t>() + offset; }

}  // namespace squat::kv
