#include "kvcache/standalone_cache.h"

#include <algorithm>
#include <utility>

#include "kvcache/page_geometry.h"

namespace squat::kv {

KvFormat FullPrecisionFormat() {
  KvFormat f;
  f.method = KvMethod::kFp16;
  f.k_bits = f.v_bits = 16;
  return f;
}

absl::StatusOr<StandaloneCache> StandaloneCache::Create(const KvModelShape& shape, const KvFormat& format,
                                                        int64_t max_tokens) {
  // Exactly the pages the sequence holds at its peak (while its prompt is staged), in pages
  // sized for this format as the pool's default.
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 || shape.num_attention_heads <= 0 || shape.head_dim <= 0) {
    return KvCacheManager::Create(shape, format, 0).status();  // its message names the bad size
  }
  if (absl::Status valid = ValidateKvFormat(format, shape.head_dim); !valid.ok()) return valid;
  const int64_t tokens = std::max<int64_t>(max_tokens, 1);
  const int64_t page_bytes = DefaultPageBytes(shape, format);
  int64_t pages = PagesForSequence(shape, format, page_bytes, tokens).total() +
                  PromptStagingPages(shape, format, page_bytes, tokens);
  if (HasSquatState(format.method)) pages += QueryGramPages(shape, page_bytes) + PendingQueryPages(shape, page_bytes);
  auto manager = KvCacheManager::Create(shape, format, page_bytes * pages);
  if (!manager.ok()) return manager.status();
  auto cache = (*manager)->NewSequence(format, max_tokens);
  if (!cache.ok()) return cache.status();
  StandaloneCache out;
  out.manager_ = *std::move(manager);
  out.cache_ = *std::move(cache);
  return out;
}

}  // namespace squat::kv
