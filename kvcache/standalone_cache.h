// One sequence cache with a pool of its own, for tools and tests that run the model without
// the engine (squat-dump-logits, model tests).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"

namespace squat::kv {

// The full-precision format ("fp16": the model's dtype).
KvFormat FullPrecisionFormat();

class StandaloneCache {
 public:
  // A pool just large enough for one sequence of max_tokens in `format`.
  static absl::StatusOr<StandaloneCache> Create(const KvModelShape& shape, const KvFormat& format,
                                                int64_t max_tokens);
  SequenceKvCache& operator*() { return *cache_; }
  SequenceKvCache* operator->() { return cache_.get(); }
  const KvCacheManager& manager() const { return *manager_; }

 private:
  std::unique_ptr<KvCacheManager> manager_;  // declared first: outlives the sequence's pages
  std::unique_ptr<SequenceKvCache> cache_;
};

}  // namespace squat::kv
