#include "kvcache/standalone_cache.h"

#include <utility>

namespace squat::kv {

KvFormat FullPrecisionFormat() {
  KvFormat f;
  f.method = KvMethod::kFp16;
  f.k_bits = f.v_bits = 16;
  return f;
}

absl::StatusOr<StandaloneCache> StandaloneCache::Create(const KvModelShape& shape, const KvFormat& format,
                                                        int64_t max_tokens) {
  // Full-precision bytes of max_tokens plus the residual windows, a few pages of rounding and
  // the SQuat state: an upper bound for every format (at::empty does not touch the memory).
  const int64_t full_bytes_per_token =
      2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * static_cast<int64_t>(c10::elementSize(shape.compute_dtype));
  const int64_t tokens = max_tokens + 2 * format.residual_length + 1 + 4 * (format.residual_length + 16);
  const int64_t state_bytes = shape.num_layers * shape.num_kv_heads * shape.head_dim * shape.head_dim * 4;
  auto manager = KvCacheManager::Create(shape, format, full_bytes_per_token * tokens + state_bytes);
  if (!manager.ok()) return manager.status();
  auto cache = (*manager)->NewSequence(format, max_tokens);
  if (!cache.ok()) return cache.status();
  StandaloneCache out;
  out.manager_ = *std::move(manager);
  out.cache_ = *std::move(cache);
  return out;
}

}  // namespace squat::kv
