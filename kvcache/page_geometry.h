// Sizes of the paged cache: bytes per token of each format, the pool's page size, how many
// tokens of a format one page holds, and how many pages a sequence reserves. Internal to kvcache/.
#pragma once

#include <cstdint>

#include "kernels/page_layout.h"
#include "kvcache/kv_cache.h"

namespace squat::kv {

inline bool IsQuantized(KvMethod method) { return method != KvMethod::kFp16; }
inline bool HasSquatState(KvMethod method) {
  return method == KvMethod::kSquatPre || method == KvMethod::kSquatPost;
}

// The pool's default page: 16 full-precision tokens, or for a quantized default format the
// fewest whole R-token blocks whose bytes reach 16 full-precision tokens.
inline constexpr int64_t kFp16TokensPerDefaultPage = 16;

int64_t ElementBytes(at::ScalarType dtype);

// Bytes of one full-precision token slot: every layer's K and V, [H_kv, d] each.
int64_t Fp16TokenBytes(const KvModelShape& shape);

// Bytes of `tokens` quantized tokens (every layer, K and V codes + fp16 scale and min).
// `tokens` must be a multiple of R.
int64_t QuantizedTokensBytes(const KvModelShape& shape, const KvFormat& format, int64_t tokens);

// KvCacheManager::BytesPerToken.
double FormatBytesPerToken(const KvModelShape& shape, const KvFormat& format);

int64_t DefaultPageBytes(const KvModelShape& shape, const KvFormat& default_format);

// Token slots of `format` in a page of page_bytes: a multiple of R for quantized formats;
// 0 when not even one R block (or one fp16 token) fits.
int64_t TokensPerPage(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes);

// SQuat compensation matrices C_0 .. C_{T-2} of one KV head: sum of g * (d - (i+1) g) floats.
int64_t SquatStateFloatsPerHead(const KvFormat& format, int64_t head_dim);

// Full-precision residual slots of a quantized sequence: R keys (one more arrives before a
// flush empties them) and R + 1 values (the window slides after the append).
inline int64_t ResidualSlots(const KvFormat& format) { return format.residual_length + 1; }

// Pages one sequence of `max_tokens` tokens needs. The SQuat state is counted even when it is
// shared (it occupies the pool either way), so "fits in the whole pool" is one rule for both.
struct SequencePages {
  int64_t data = 0;      // fp16 token pages, or quantized K/V pages
  int64_t residual = 0;  // fp16 residual windows (quantized formats)
  int64_t state = 0;     // SQuat C_i (squat formats)
  int64_t total() const { return data + residual + state; }
};
SequencePages PagesForSequence(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                               int64_t max_tokens);
// Pages of the SQuat state alone (0 for fp16 and kivi).
int64_t SquatStatePages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes);

// While its prompt is incomplete, a quantized sequence keeps the prompt's keys and values in
// full precision ("staging": fp16-layout slots for every reserved token) and, when it builds its
// own SQuat subspace, the query Gram of every layer and KV head (float64) plus the queries of
// the unfinished Gram block (compute dtype). All of it returns to the pool when the prompt ends.
inline constexpr int64_t kGramBlockTokens = 32;
int64_t PromptStagingPages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                           int64_t tokens);
int64_t QueryGramPages(const KvModelShape& shape, int64_t page_bytes);
int64_t PendingQueryPages(const KvModelShape& shape, int64_t page_bytes);

// Pages a sequence of `tokens` holds at its peak, while its prompt is staged: steady state,
// prompt staging and, when it collects its prompt's queries (it builds its own SQuat
// subspace), the query Gram and the pending query rows.
int64_t PeakPagesForSequence(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes, int64_t tokens,
                             bool collects_queries);

// The kernels' description of `format`'s pages in `pool` (kernels/page_layout.h); the
// quantized fields only for quantized formats. Throws for a compute dtype the layout has not.
kernels::PoolLayout PoolLayoutFor(const KvModelShape& shape, const PagePool& pool, const KvFormat& format);

// Largest max_tokens for which PagesForSequence(...).total() <= total_pages (0 if none): the
// longest sequence after its prompt (prompt staging excluded).
int64_t CapacityForPages(const KvModelShape& shape, const KvFormat& format, int64_t page_bytes,
                         int64_t total_pages);

}  // namespace squat::kv
