// CUDA kernels of the paged KV cache with a plain C++ API (raw pointers, sizes, a `void*`
// stream; nullptr = the legacy default stream, which LibTorch uses unless told otherwise).
// No torch and no CUDA headers here, so that g++ translation units with ATen can include it.
//
// Page layout (docs/kv-cache.md): the pool is one byte array of `page_bytes` pages.
// - Full-precision slot pages (fp16 format, residual windows, prompt staging), per layer:
//   K [H_kv, slots_per_page, d] then V [H_kv, slots_per_page, d] in the compute dtype.
// - Quantized pages, per layer: K words int32 [H_kv, d, tpp / (32 / k_bits)] (tokens packed,
//   LSB first), V words int32 [H_kv, tpp, d / (32 / v_bits)] (channels packed), then fp16
//   K scale, K min [H_kv, d, tpp / G], V scale, V min [H_kv, tpp, d / G].
// - SQuat state: float32 C_i per (layer, KV head), floats laid over pages in order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace squat::kernels {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct PoolLayout {
  void* pool = nullptr;  // device base of page 0
  int64_t page_bytes = 0;
  int32_t num_layers = 0, kv_heads = 0, q_heads = 0, head_dim = 0;
  DType dtype = DType::kFloat16;  // full-precision slots, q, new k/v, output
  int32_t slots_per_page = 0;     // full-precision token slots per page
  // Quantized formats only.
  int32_t k_bits = 2, v_bits = 2, group_size = 32, residual_length = 32;
  int32_t tokens_per_page = 0;  // quantized tokens per page
};

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
  const float* inv_freq = nullptr;  // device [d / 2] (pre_rope)
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

// Whether the kernels handle this layout (head_dim a multiple of 8 up to 1024, 16-byte aligned
// pages; for quantized formats bits 2 or 4, G dividing d and the page's tokens, ...).
bool LayoutSupported(const PoolLayout& layout, bool quantized);

// Appends each sequence's new key and value to its pages (residual windows / fp16 slots) and
// computes its attention output over all N tokens: scores 1/sqrt(d) q.k (keys dequantized and,
// for pre_rope, rotated at their positions 0..N-1), float32 softmax, probabilities times
// dequantized values. Query head j reads KV head j / (H_q / H_kv). One launch for the batch.
// Returns 0 or a CUDA error code (ErrorString).
int PagedDecodeAttention(const DecodeArgs& args, void* stream);

// Quantization of one G-token key group of one sequence and layer (every KV head): source
// slots [src_first_slot, + G) of full-precision slot pages (K part), destination tokens
// [dst_first_token, + G) of quantized pages (a whole group, inside one page). With state_pages
// >= 0 the channel blocks of `block_size` are quantized in order and each block's error is fed
// forward through that sequence's C_i (spec 4.4); otherwise plain KIVI.
struct KeyGroupJob {
  int32_t layer = 0;
  int32_t src_pages = 0, src_first_slot = 0;
  int32_t dst_pages = 0, dst_first_token = 0;
  int32_t state_pages = -1;
};
// One value token of one sequence and layer (every KV head): source slot (V part) -> quantized
// token (per token over G channels, spec 5.2).
struct ValueTokenJob {
  int32_t layer = 0;
  int32_t src_pages = 0, src_slot = 0;
  int32_t dst_pages = 0, dst_token = 0;
};
int QuantizeKeyGroups(const PoolLayout& layout, const KeyGroupJob* jobs, int32_t num_jobs,
                      const int32_t* page_ids, int32_t block_size, void* stream);
int QuantizeValueTokens(const PoolLayout& layout, const ValueTokenJob* jobs, int32_t num_jobs,
                        const int32_t* page_ids, void* stream);

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
