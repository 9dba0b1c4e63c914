#include "kvcache/paged_stores.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "kernels/page_layout.h"
#include "kvcache/page_geometry.h"

namespace squat::kv {
namespace {

// Calls fn(page_index, offset_in_page, offset_in_range, n) for each piece of the logical range
// [first, first + count) cut at page boundaries of `per_page` units.
template <typename Fn>
void ForEachPiece(int64_t first, int64_t count, int64_t per_page, Fn&& fn) {
  int64_t done = 0;
  while (done < count) {
    const int64_t unit = first + done;
    const int64_t offset = unit % per_page;
    const int64_t n = std::min(per_page - offset, count - done);
    fn(unit / per_page, offset, done, n);
    done += n;
  }
}

at::Tensor CatOrSingle(std::vector<at::Tensor>& pieces, int64_t dim) {
  return pieces.size() == 1 ? pieces[0] : at::cat(pieces, dim);
}

}  // namespace

// ---- Fp16SlotStore ----

Fp16SlotStore::Fp16SlotStore(const PagePool& pool, std::vector<int64_t> pages, const KvModelShape& shape,
                             int64_t slots_per_page)
    : pool_(&pool), pages_(std::move(pages)), heads_(shape.num_kv_heads), head_dim_(shape.head_dim),
      slots_per_page_(slots_per_page), dtype_(shape.compute_dtype) {}

at::Tensor Fp16SlotStore::PageSlots(int64_t page_index, int64_t layer, KvPart part) const {
  const int64_t elements = heads_ * slots_per_page_ * head_dim_;
  const int64_t first = kernels::SlotElement(heads_, slots_per_page_, head_dim_, layer, static_cast<int64_t>(part), 0, 0);
  return pool_->View(pages_[page_index], first * ElementBytes(dtype_), elements, dtype_)
      .view({heads_, slots_per_page_, head_dim_});
}

void Fp16SlotStore::Write(int64_t layer, KvPart part, int64_t first_slot, const at::Tensor& x) const {
  const int64_t count = x.size(1);
  TORCH_CHECK(first_slot >= 0 && first_slot + count <= capacity(), "KV slots [", first_slot, ", ",
              first_slot + count, ") beyond capacity ", capacity());
  ForEachPiece(first_slot, count, slots_per_page_, [&](int64_t page, int64_t offset, int64_t from, int64_t n) {
    PageSlots(page, layer, part).narrow(1, offset, n).copy_(x.narrow(1, from, n));
  });
}

at::Tensor Fp16SlotStore::Read(int64_t layer, KvPart part, int64_t first_slot, int64_t count) const {
  TORCH_CHECK(first_slot >= 0 && first_slot + count <= capacity(), "KV slots [", first_slot, ", ",
              first_slot + count, ") beyond capacity ", capacity());
  if (count == 0) {
    return at::empty({heads_, 0, head_dim_}, at::TensorOptions().dtype(dtype_).device(pool_->device()));
  }
  std::vector<at::Tensor> pieces;
  ForEachPiece(first_slot, count, slots_per_page_, [&](int64_t page, int64_t offset, int64_t, int64_t n) {
    pieces.push_back(PageSlots(page, layer, part).narrow(1, offset, n));
  });
  return CatOrSingle(pieces, 1);
}

// ---- QuantizedTokenStore ----

QuantizedTokenStore::QuantizedTokenStore(const PagePool& pool, std::vector<int64_t> pages, const KvModelShape& shape,
                                         const KvFormat& format, int64_t tokens_per_page)
    : pool_(&pool), pages_(std::move(pages)), heads_(shape.num_kv_heads), head_dim_(shape.head_dim),
      tokens_per_page_(tokens_per_page), group_(format.group_size), k_bits_(format.k_bits), v_bits_(format.v_bits),
      key_per_word_(32 / format.k_bits), value_per_word_(32 / format.v_bits) {}

QuantizedTokenStore::PageViews QuantizedTokenStore::Views(int64_t page_index, int64_t layer) const {
  const int64_t h = heads_, d = head_dim_, n = tokens_per_page_;
  const kernels::QuantOffsets o = kernels::QuantLayerOffsets(h, d, n, k_bits_, v_bits_, group_);
  const int64_t page = pages_[page_index], base = layer * o.layer_bytes;
  auto view = [&](int64_t offset, int64_t count, at::ScalarType dtype) {
    return pool_->View(page, base + offset, count, dtype);
  };
  PageViews v;
  v.key_words = view(o.key_words, h * d * (n / key_per_word_), at::kInt).view({h, d, n / key_per_word_});
  v.value_words = view(o.value_words, h * n * (d / value_per_word_), at::kInt).view({h, n, d / value_per_word_});
  v.key_scale = view(o.key_scale, h * d * (n / group_), at::kHalf).view({h, d, n / group_});
  v.key_min = view(o.key_min, h * d * (n / group_), at::kHalf).view({h, d, n / group_});
  v.value_scale = view(o.value_scale, h * n * (d / group_), at::kHalf).view({h, n, d / group_});
  v.value_min = view(o.value_min, h * n * (d / group_), at::kHalf).view({h, n, d / group_});
  return v;
}

void QuantizedTokenStore::WriteKeys(int64_t layer, int64_t first_token, const PackedKeys& keys) const {
  const int64_t count = keys.scale.size(2) * group_;
  TORCH_CHECK(first_token >= 0 && first_token + count <= capacity(), "quantized keys [", first_token, ", ",
              first_token + count, ") beyond capacity ", capacity());
  TORCH_CHECK(first_token % group_ == 0 && first_token % key_per_word_ == 0,
              "quantized keys must start at a whole group, got token ", first_token);
  ForEachPiece(first_token, count, tokens_per_page_, [&](int64_t page, int64_t offset, int64_t from, int64_t n) {
    const PageViews v = Views(page, layer);
    v.key_words.narrow(2, offset / key_per_word_, n / key_per_word_)
        .copy_(keys.words.narrow(2, from / key_per_word_, n / key_per_word_));
    v.key_scale.narrow(2, offset / group_, n / group_).copy_(keys.scale.narrow(2, from / group_, n / group_));
    v.key_min.narrow(2, offset / group_, n / group_).copy_(keys.min.narrow(2, from / group_, n / group_));
  });
}

void QuantizedTokenStore::WriteValues(int64_t layer, int64_t first_token, const PackedValues& values) const {
  const int64_t count = values.words.size(1);
  TORCH_CHECK(first_token >= 0 && first_token + count <= capacity(), "quantized values [", first_token, ", ",
              first_token + count, ") beyond capacity ", capacity());
  ForEachPiece(first_token, count, tokens_per_page_, [&](int64_t page, int64_t offset, int64_t from, int64_t n) {
    const PageViews v = Views(page, layer);
    v.value_words.narrow(1, offset, n).copy_(values.words.narrow(1, from, n));
    v.value_scale.narrow(1, offset, n).copy_(values.scale.narrow(1, from, n));
    v.value_min.narrow(1, offset, n).copy_(values.min.narrow(1, from, n));
  });
}

PackedKeys QuantizedTokenStore::ReadKeys(int64_t layer, int64_t count) const {
  TORCH_CHECK(count >= 0 && count <= capacity() && count % group_ == 0 && count % key_per_word_ == 0,
              "cannot read ", count, " quantized keys");
  std::vector<at::Tensor> words, scale, min;
  ForEachPiece(0, count, tokens_per_page_, [&](int64_t page, int64_t, int64_t, int64_t n) {
    const PageViews v = Views(page, layer);
    words.push_back(v.key_words.narrow(2, 0, n / key_per_word_));
    scale.push_back(v.key_scale.narrow(2, 0, n / group_));
    min.push_back(v.key_min.narrow(2, 0, n / group_));
  });
  if (words.empty()) {
    auto options = at::TensorOptions().device(pool_->device());
    return {at::empty({heads_, head_dim_, 0}, options.dtype(at::kInt)),
            at::empty({heads_, head_dim_, 0}, options.dtype(at::kHalf)),
            at::empty({heads_, head_dim_, 0}, options.dtype(at::kHalf))};
  }
  return {CatOrSingle(words, 2), CatOrSingle(scale, 2), CatOrSingle(min, 2)};
}

PackedValues QuantizedTokenStore::ReadValues(int64_t layer, int64_t count) const {
  TORCH_CHECK(count >= 0 && count <= capacity(), "cannot read ", count, " quantized values");
  std::vector<at::Tensor> words, scale, min;
  ForEachPiece(0, count, tokens_per_page_, [&](int64_t page, int64_t, int64_t, int64_t n) {
    const PageViews v = Views(page, layer);
    words.push_back(v.value_words.narrow(1, 0, n));
    scale.push_back(v.value_scale.narrow(1, 0, n));
    min.push_back(v.value_min.narrow(1, 0, n));
  });
  if (words.empty()) {
    auto options = at::TensorOptions().device(pool_->device());
    return {at::empty({heads_, 0, head_dim_ / value_per_word_}, options.dtype(at::kInt)),
            at::empty({heads_, 0, head_dim_ / group_}, options.dtype(at::kHalf)),
            at::empty({heads_, 0, head_dim_ / group_}, options.dtype(at::kHalf))};
  }
  return {CatOrSingle(words, 1), CatOrSingle(scale, 1), CatOrSingle(min, 1)};
}

// ---- PagedArray ----

PagedArray::PagedArray(const PagePool& pool, std::vector<int64_t> pages, at::ScalarType dtype)
    : pool_(&pool), pages_(std::move(pages)), dtype_(dtype), element_bytes_(ElementBytes(dtype)),
      per_page_(pool.page_bytes() / ElementBytes(dtype)) {
  TORCH_CHECK(pool.page_bytes() % element_bytes_ == 0, "paged array: page of ", pool.page_bytes(),
              " bytes is not a whole number of ", dtype, " elements");
}

void PagedArray::Write(int64_t offset, const at::Tensor& values) const {
  at::Tensor flat = values.reshape({-1});
  const int64_t count = flat.numel();
  TORCH_CHECK(offset >= 0 && offset + count <= capacity(), "paged array [", offset, ", ", offset + count,
              ") beyond capacity ", capacity());
  ForEachPiece(offset, count, per_page_, [&](int64_t page, int64_t in_page, int64_t from, int64_t n) {
    pool_->View(pages_[page], in_page * element_bytes_, n, dtype_).copy_(flat.narrow(0, from, n));
  });
}

at::Tensor PagedArray::Read(int64_t offset, int64_t count) const {
  TORCH_CHECK(offset >= 0 && count > 0 && offset + count <= capacity(), "paged array [", offset, ", ",
              offset + count, ") beyond capacity ", capacity());
  std::vector<at::Tensor> pieces;
  ForEachPiece(offset, count, per_page_, [&](int64_t page, int64_t in_page, int64_t, int64_t n) {
    pieces.push_back(pool_->View(pages_[page], in_page * element_bytes_, n, dtype_));
  });
  return CatOrSingle(pieces, 0);
}

}  // namespace squat::kv
