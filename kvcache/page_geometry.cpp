#include "kvcache/page_geometry.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "kernels/page_layout.h"
#include "kvcache/page_pool.h"

namespace squat::kv {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t KvElementsPerToken(const KvModelShape& shape) {
  return shape.num_layers * shape.num_kv_heads * shape.head_dim;
}

}  // namespace

int64_t ElementBytes(at::ScalarType dtype) { return static_cast<int64_t>(c10::elementSize(dtype)); }

int64_t Fp16TokenBytes(const KvModelShape& shape) {
  return kernels::SlotTokenBytes(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                                 ElementBytes(shape.compute_dtype));
}

int64_t QuantizedTokensBytes(const KvModelShape& shape, const KvFormat& format, int64_t tokens) {
  return kernels::QuantizedTokensBytes(shape.num_layers, shape.num_kv_heads, shape.head_dim, tokens, format.k_bits,
                                       format.v_bits, format.group_size);
}

double FormatBytesPerToken(const KvModelShape& shape, const KvFormat& format) {
  const double elements = static_cast<double>(KvElementsPerToken(shape));
  if (!IsQuantized(format.method)) return elements * 2.0 * ElementBytes(shape.compute_dtype);
  if (format.group_size <= 0) return 0.0;  // invalid format
  const double group = static_cast<double>(format.group_size);
  return elements * (format.k_bits / 8.0 + 4.0 / group + format.v_bits / 8.0 + 4.0 / group);
}

int64_t DefaultPageBytes(const KvModelShape& shape, const KvFormat& default_format) {
  const int64_t fp16_page = kFp16TokensPerDefaultPage * Fp16TokenBytes(shape);
  if (!IsQuantized(default_format.method)) return fp16_page;
  const int64_t block = QuantizedTokensBytes(shape, default_format, default_format.residual_length);
  return CeilDiv(fp16_page, block) * block;
}

int64_t TokensPerPage(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes) {
  if (!IsQuantized(format.method)) return page_bytes / Fp16TokenBytes(shape);
  const int64_t block = QuantizedTokensBytes(shape, format, format.residual_length);
  return page_bytes / block * format.residual_length;
}

int64_t SquatStateFloatsPerHead(const KvFormat& format, int64_t head_dim) {
  if (!HasSquatState(format.method)) return 0;
  return kernels::SquatStateFloatsPerHead(head_dim, format.block_size);
}

int64_t SquatStatePages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes) {
  const int64_t bytes = shape.num_layers * shape.num_kv_heads *
                        SquatStateFloatsPerHead(format, shape.head_dim) * static_cast<int64_t>(sizeof(float));
  return CeilDiv(bytes, page_bytes);
}

SequencePages PagesForSequence(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                               int64_t max_tokens) {
  SequencePages pages;
  const int64_t per_page = TokensPerPage(shape, format, page_bytes);
  if (per_page <= 0) return pages;
  if (!IsQuantized(format.method)) {
    pages.data = CeilDiv(max_tokens, per_page);
    return pages;
  }
  // Quantized slots hold only what left the residual windows: keys in whole R blocks, values
  // all but the last R tokens.
  const int64_t r = format.residual_length;
  const int64_t quantized_tokens = std::max<int64_t>({max_tokens - max_tokens % r, max_tokens - r, 0});
  pages.data = CeilDiv(quantized_tokens, per_page);
  pages.residual = CeilDiv(ResidualSlots(format), TokensPerPage(shape, KvFormat{KvMethod::kFp16}, page_bytes));
  pages.state = SquatStatePages(shape, format, page_bytes);
  return pages;
}

int64_t PromptStagingPages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                           int64_t tokens) {
  if (!IsQuantized(format.method)) return 0;  // the fp16 format stores the prompt as it is
  const int64_t slots = TokensPerPage(shape, KvFormat{KvMethod::kFp16}, page_bytes);
  return slots > 0 ? CeilDiv(tokens, slots) : 0;
}

int64_t QueryGramPages(const KvModelShape& shape, int64_t page_bytes) {
  const int64_t doubles = shape.num_layers * shape.num_kv_heads * shape.head_dim * shape.head_dim;
  return CeilDiv(doubles, page_bytes / ElementBytes(at::kDouble));
}

int64_t PendingQueryPages(const KvModelShape& shape, int64_t page_bytes) {
  const int64_t elements = shape.num_layers * kGramBlockTokens * shape.num_attention_heads * shape.head_dim;
  return CeilDiv(elements, page_bytes / ElementBytes(shape.compute_dtype));
}

int64_t PeakPagesForSequence(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes, int64_t tokens,
                             bool collects_queries) {
  return PagesForSequence(shape, format, page_bytes, tokens).total() +
         PromptStagingPages(shape, format, page_bytes, tokens) +
         (collects_queries ? QueryGramPages(shape, page_bytes) + PendingQueryPages(shape, page_bytes) : 0);
}

kernels::PoolLayout PoolLayoutFor(const KvModelShape& shape, const PagePool& pool, const KvFormat& format) {
  kernels::PoolLayout L;
  L.pool = const_cast<void*>(pool.data());
  L.page_bytes = pool.page_bytes();
  L.num_layers = static_cast<int32_t>(shape.num_layers);
  L.kv_heads = static_cast<int32_t>(shape.num_kv_heads);
  L.q_heads = static_cast<int32_t>(shape.num_attention_heads);
  L.head_dim = static_cast<int32_t>(shape.head_dim);
  switch (shape.compute_dtype) {
    case at::kFloat: L.dtype = kernels::DType::kFloat32; break;
    case at::kHalf: L.dtype = kernels::DType::kFloat16; break;
    case at::kBFloat16: L.dtype = kernels::DType::kBFloat16; break;
    default: TORCH_CHECK(false, "KV cache: unsupported compute dtype ", shape.compute_dtype);
  }
  L.slots_per_page = static_cast<int32_t>(TokensPerPage(shape, KvFormat{KvMethod::kFp16}, pool.page_bytes()));
  if (IsQuantized(format.method)) {
    L.k_bits = format.k_bits;
    L.v_bits = format.v_bits;
    L.group_size = static_cast<int32_t>(format.group_size);
    L.residual_length = static_cast<int32_t>(format.residual_length);
    L.tokens_per_page = static_cast<int32_t>(TokensPerPage(shape, format, pool.page_bytes()));
  }
  return L;
}

int64_t CapacityForPages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                         int64_t total_pages) {
  const int64_t per_page = TokensPerPage(shape, format, page_bytes);
  if (per_page <= 0) return 0;
  if (!IsQuantized(format.method)) return total_pages * per_page;
  const SequencePages overhead = PagesForSequence(shape, format, page_bytes, /*max_tokens=*/0);
  const int64_t data_pages = total_pages - overhead.residual - overhead.state;
  if (data_pages < 0) return 0;
  // The last R - 1 tokens never leave the key residual and never need a quantized key slot;
  // the value window lags by R, so data_pages * per_page + R - 1 tokens fit exactly.
  return data_pages * per_page + format.residual_length - 1;
}

}  // namespace squat::kv
