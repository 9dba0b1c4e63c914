// Paged decode attention over the KV pool (kernels/page_layout.h), with a plain C++ API: raw
// pointers, sizes, a `void*` stream (nullptr = the legacy default stream, which LibTorch uses
// unless told otherwise). No torch and no CUDA headers, so g++ translation units with ATen can
// include it. Functions return 0 or a CUDA error code (cuda_runtime.h's ErrorString).
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

// Appends each sequence's new key and value to its pages (residual windows / fp16 slots) and
// computes its attention output over all N tokens: scores 1/sqrt(d) q.k (keys dequantized and,
// for pre_rope, rotated at their positions 0..N-1 with the RoPE table, RotatePair), float32
// softmax, probabilities times dequantized values. Query head j reads KV head j / (H_q / H_kv). One launch for the batch.
// Returns 0 or a CUDA error code (ErrorString).
int PagedDecodeAttention(const DecodeArgs& args, void* stream);

}  // namespace squat::kernels
