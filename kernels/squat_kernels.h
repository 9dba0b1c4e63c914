// CUDA kernels of the paged KV cache with a plain C++ API (raw pointers, sizes, a `void*`
// stream; nullptr = the legacy default stream, which LibTorch uses unless told otherwise).
// No torch and no CUDA headers here, so that g++ translation units with ATen can include it.
// The page layout (and PoolLayout) is kernels/page_layout.h, shared with the host code.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/page_layout.h"

namespace squat::kernels {

// One sequence of a decode step (shared by every layer: the windows move in lockstep).
// Page-table fields are offsets into the step's page-id array.
struct DecodeSequence {
  int32_t row = 0;             // row of q / k / v / out
  int32_t data_pages = 0;      // quantized pages, or the fp16 format's slot pages
  int32_t residual_pages = 0;  // residual-window slot pages (quantized formats)
  int32_t tokens = 0;          // N: cached tokens including this step's
  int32_t quantized_keys = 0;  // N_q (quantized formats)
  int32_t quantized_values = 0;  // N_v; value token n >= N_v is in ring slot n mod (R + 1)
  int32_t key_slot = 0;        // slot the new key goes to (|Kr| before the append; fp16: N - 1)
};

struct DecodeArgs {
  PoolLayout layout;
  int32_t layer = 0;
  bool quantized = false;  // false: the fp16 format (all tokens in data slot pages)
  bool pre_rope = false;   // keys stored before RoPE: rotate them in the kernel
  const DecodeSequence* sequences = nullptr;  // device [num_sequences]
  const int32_t* page_ids = nullptr;          // device
  int32_t num_sequences = 0;
  // Row r of q is at q + r * q_row_stride (elements), heads d apart, channels contiguous.
  const void* q = nullptr;  // [rows, H_q, d], RoPE applied
  int64_t q_row_stride = 0;
  const void* k_new = nullptr;  // [rows, H_kv, d]: pre-RoPE keys when pre_rope, else rotated
  int64_t k_row_stride = 0;
  const void* v_new = nullptr;  // [rows, H_kv, d]
  int64_t v_row_stride = 0;
  // pre_rope: the model's RoPE table, device float32 [rope_positions, d] (page_layout.h).
  const float* rope_table = nullptr;
  int32_t rope_positions = 0;
  void* out = nullptr;              // [rows, H_q, d]
  int64_t out_row_stride = 0;
  // Split-KV (flash-decoding): with num_splits > 1, the tokens of each (sequence, KV head) are
  // cut into chunks of split_tokens (a multiple of 32; num_splits * split_tokens must cover
  // every sequence's N) attended by separate blocks, which write partial (max, sum, output)
  // into `workspace` (DecodeWorkspaceFloats floats, device); a second launch combines them.
  int32_t num_splits = 1;
  int32_t split_tokens = 0;
  float* workspace = nullptr;
};

// Splits for a launch of `num_sequences` whose longest has `max_tokens` tokens: enough blocks
// to fill the device's SMs, chunks of at least 256 tokens (num_splits 1 when the grid is
// already full or the contexts are short).
struct DecodeSplit {
  int32_t num_splits = 1;
  int32_t split_tokens = 0;
};
DecodeSplit ChooseDecodeSplit(int32_t num_sequences, int32_t kv_heads, int32_t max_tokens);
// Floats of the split-KV workspace for these sizes.
int64_t DecodeWorkspaceFloats(int32_t num_sequences, int32_t q_heads, int32_t head_dim, int32_t num_splits);

// Whether the kernels handle this layout (head_dim 64, 128 or 256, 16-byte aligned pages; for
// quantized formats bits 2 or 4, G dividing d and the page's tokens, ...).
bool LayoutSupported(const PoolLayout& layout, bool quantized);

// Appends each sequence's new key and value to its pages (residual windows / fp16 slots) and
// computes its attention output over all N tokens: scores 1/sqrt(d) q.k (keys dequantized and,
// for pre_rope, rotated at their positions 0..N-1 with the RoPE table, RotatePair), float32
// softmax, probabilities times dequantized values. Query head j reads KV head j / (H_q / H_kv). One launch for the batch.
// Returns 0 or a CUDA error code (ErrorString).
int PagedDecodeAttention(const DecodeArgs& args, void* stream);

// Quantization work of one sequence, for every layer at once (the windows of all layers move
// in lockstep). Page-table fields are offsets into the page-id array.
//
// KeyTask: num_groups G-token key groups, from full-precision slots [src_first_slot, + G
// num_groups) of src_pages (K part: a residual window or prompt staging) into quantized tokens
// [dst_first_token, ...) of dst_pages (whole groups). With state_pages >= 0 the channel blocks
// of `block_size` are quantized in order and each block's error is fed forward through that
// sequence's C_i (spec 4.4); otherwise plain KIVI.
struct KeyTask {
  int32_t src_pages = 0, src_first_slot = 0;
  int32_t dst_pages = 0, dst_first_token = 0;
  int32_t state_pages = -1;
  int32_t num_groups = 0;
  int32_t first_block = 0;  // blocks of earlier tasks in the launch: sum of num_groups * layers
};
// ValueTask: num_tokens value tokens (per token over G channels, spec 5.2), token t from slot
// src_first_slot + t (modulo ring when ring > 0; V part) into quantized token dst_first_token + t.
struct ValueTask {
  int32_t src_pages = 0, src_first_slot = 0, ring = 0;
  int32_t dst_pages = 0, dst_first_token = 0;
  int32_t num_tokens = 0;
  int32_t first_block = 0;  // sum of num_tokens * layers over earlier tasks
};
// One launch each; total_blocks = the last task's first_block + its blocks. One block per
// (layer, group or token) and KV head.
int QuantizeKeyTasks(const PoolLayout& layout, const KeyTask* tasks, int32_t num_tasks, int32_t total_blocks,
                     const int32_t* page_ids, int32_t block_size, void* stream);
int QuantizeValueTasks(const PoolLayout& layout, const ValueTask* tasks, int32_t num_tasks, int32_t total_blocks,
                       const int32_t* page_ids, void* stream);

// Writes rows of new keys and values into full-precision slots of one layer: entry i of
// `slots` (device int32 triples: row, page id, slot) copies row `row` of k (k + row *
// k_row_stride) and of v ([H_kv, d] each, compute dtype, 16-byte aligned) into that slot's K
// and V parts. One launch for num_entries entries.
int StoreSlotRows(const PoolLayout& layout, int32_t layer, const int32_t* slots, int32_t num_entries, const void* k,
                  int64_t k_row_stride, const void* v, int64_t v_row_stride, void* stream);

// Small runtime helpers so that callers need no CUDA headers.
const char* ErrorString(int error);
int DeviceCount();  // 0 when there is no device or driver
// Free and total memory of `device` (makes it this thread's current device for these kernels).
int MemoryInfo(int device, size_t* free_bytes, size_t* total_bytes);
void* AllocPinned(size_t bytes);  // page-locked host memory, nullptr on failure
void FreePinned(void* ptr);
void* AllocDevice(size_t bytes);  // nullptr on failure
void FreeDevice(void* ptr);
int CopyToDevice(void* dst, const void* src, size_t bytes, void* stream);  // async
int CopyToHost(void* dst, const void* src, size_t bytes, void* stream);    // async
int StreamSynchronize(void* stream);
// An event that orders reuse of a pinned staging buffer after the copy that read it.
void* EventCreate();
void EventDestroy(void* event);
int EventRecord(void* event, void* stream);
int EventSynchronize(void* event);

}  // namespace squat::kernels
