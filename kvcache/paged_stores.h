// Typed views of a list of pages: full-precision K/V token slots, packed quantized K/V tokens,
// and a flat array (SQuat state, query Gram). Each store addresses logical slots/tokens/floats
// and maps them onto its (not necessarily contiguous) pages, with the offsets of
// kernels/page_layout.h. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/page_pool.h"

namespace squat::kv {

enum class KvPart { kKeys = 0, kValues = 1 };

// Full-precision page layout, per layer: K [H_kv, slots, d] then V [H_kv, slots, d] in the
// compute dtype. Used for the fp16 format (slot = position) and for residual windows.
class Fp16SlotStore {
 public:
  Fp16SlotStore() = default;
  Fp16SlotStore(const PagePool& pool, std::vector<int64_t> pages, const KvModelShape& shape, int64_t slots_per_page);
  Fp16SlotStore(const PageLease& lease, const KvModelShape& shape, int64_t slots_per_page)
      : Fp16SlotStore(lease.pool(), lease.pages(), shape, slots_per_page) {}

  int64_t capacity() const { return static_cast<int64_t>(pages_.size()) * slots_per_page_; }
  // x [H_kv, n, d] into slots [first_slot, first_slot + n).
  void Write(int64_t layer, KvPart part, int64_t first_slot, const at::Tensor& x) const;
  // [H_kv, count, d]: a view when the slots lie in one page, else a copy.
  at::Tensor Read(int64_t layer, KvPart part, int64_t first_slot, int64_t count) const;

 private:
  at::Tensor PageSlots(int64_t page_index, int64_t layer, KvPart part) const;

  const PagePool* pool_ = nullptr;
  std::vector<int64_t> pages_;
  int64_t heads_ = 0, head_dim_ = 0, slots_per_page_ = 0;
  at::ScalarType dtype_ = at::kFloat;
};

// Packed keys of n tokens: int32 words [H_kv, d, n / fpi_K] (tokens packed along the last
// axis), fp16 scale and min [H_kv, d, n / G].
struct PackedKeys {
  at::Tensor words, scale, min;
};
// Packed values of n tokens: int32 words [H_kv, n, d / fpi_V] (channels packed), fp16 scale
// and min [H_kv, n, d / G].
struct PackedValues {
  at::Tensor words, scale, min;
};

// Quantized page layout, per layer: K words, V words (int32), K scale, K min, V scale, V min
// (fp16), shapes as in PackedKeys / PackedValues with n = tokens per page.
class QuantizedTokenStore {
 public:
  QuantizedTokenStore() = default;
  QuantizedTokenStore(const PagePool& pool, std::vector<int64_t> pages, const KvModelShape& shape,
                      const KvFormat& format, int64_t tokens_per_page);
  QuantizedTokenStore(const PageLease& lease, const KvModelShape& shape, const KvFormat& format,
                      int64_t tokens_per_page)
      : QuantizedTokenStore(lease.pool(), lease.pages(), shape, format, tokens_per_page) {}

  int64_t capacity() const { return static_cast<int64_t>(pages_.size()) * tokens_per_page_; }
  // Tokens [first_token, first_token + n) with first_token and n multiples of R.
  void WriteKeys(int64_t layer, int64_t first_token, const PackedKeys& keys) const;
  // Any token range.
  void WriteValues(int64_t layer, int64_t first_token, const PackedValues& values) const;
  // Tokens [0, count) (count a multiple of R for keys).
  PackedKeys ReadKeys(int64_t layer, int64_t count) const;
  PackedValues ReadValues(int64_t layer, int64_t count) const;

 private:
  struct PageViews {
    at::Tensor key_words, key_scale, key_min, value_words, value_scale, value_min;
  };
  PageViews Views(int64_t page_index, int64_t layer) const;

  const PagePool* pool_ = nullptr;
  std::vector<int64_t> pages_;
  int64_t heads_ = 0, head_dim_ = 0, tokens_per_page_ = 0, group_ = 0;
  int k_bits_ = 2, v_bits_ = 2;
  int64_t key_per_word_ = 0, value_per_word_ = 0;
};

// A flat array of `dtype` elements laid over pages (page_bytes / element size each; the page
// size must be a multiple of the element size). Used for the SQuat state (float32), the query
// Gram (float64) and queries waiting for a Gram block (compute dtype).
class PagedArray {
 public:
  PagedArray() = default;
  PagedArray(const PagePool& pool, std::vector<int64_t> pages, at::ScalarType dtype);
  PagedArray(const PageLease& lease, at::ScalarType dtype) : PagedArray(lease.pool(), lease.pages(), dtype) {}

  int64_t capacity() const { return static_cast<int64_t>(pages_.size()) * per_page_; }
  void Write(int64_t offset, const at::Tensor& values) const;  // any shape, written flattened
  at::Tensor Read(int64_t offset, int64_t count) const;        // [count]: a view within one page, else a copy

 private:
  const PagePool* pool_ = nullptr;
  std::vector<int64_t> pages_;
  at::ScalarType dtype_ = at::kFloat;
  int64_t element_bytes_ = 4, per_page_ = 0;
};

}  // namespace squat::kv
