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

absl::StatusOr<StandaloneCache> StandaloneCache::Create(const KvModelShape& shape,
                                                        const std::vector<KvFormat>& formats, int64_t max_tokens) {
  if (formats.empty()) return absl::InvalidArgumentError("standalone cache: no format");
  if (shape.num_layers <= 0 || shape.num_kv_heads <= 0 || shape.num_attention_heads <= 0 || shape.head_dim <= 0) {
    return KvCacheManager::Create(shape, formats[0], 0).status();  // its message names the bad size
  }
  const KvFormat* largest = &formats[0];
  for (const KvFormat& format : formats) {
    if (absl::Status valid = ValidateKvFormat(format, shape.head_dim); !valid.ok()) return valid;
    if (DefaultPageBytes(shape, format) > DefaultPageBytes(shape, *largest)) largest = &format;
  }
  // Exactly the pages the sequences hold at their peak (while their prompts are staged).
  const int64_t tokens = std::max<int64_t>(max_tokens, 1);
  const int64_t page_bytes = DefaultPageBytes(shape, *largest);
  int64_t pages = 0;
  for (const KvFormat& format : formats) {
    pages += PeakPagesForSequence(shape, format, page_bytes, tokens, HasSquatState(format.method));
  }
  auto manager = KvCacheManager::Create(shape, *largest, page_bytes * pages);
  if (!manager.ok()) return manager.status();
  StandaloneCache out;
  out.manager_ = *std::move(manager);
  for (const KvFormat& format : formats) {
    auto cache = out.manager_->NewSequence(format, max_tokens);
    if (!cache.ok()) return cache.status();
    out.caches_.push_back(*std::move(cache));
  }
  return out;
}

}  // namespace squat::kv
