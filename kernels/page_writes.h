// Kernels that write the KV pool's pages (kernels/page_layout.h): new rows into full-precision
// slots and the quantization of full windows. Plain C++ API as decode_attention.h: raw pointers,
// a `void*` stream, 0 or a CUDA error code.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/page_layout.h"

namespace squat::kernels {

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

}  // namespace squat::kernels
