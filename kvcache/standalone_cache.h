// Sequence caches with a pool of their own (one sequence per format, all in one pool), for tools
// and tests that run the model without the engine (squat-dump-logits, squat-eval, model tests).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"

namespace squat::kv {

// The full-precision format ("fp16": the model's dtype).
KvFormat FullPrecisionFormat();

class StandaloneCache {
 public:
  // A pool just large enough for one sequence of max_tokens in each format (its pages sized for
  // the format that needs the largest), and those sequences.
  static absl::StatusOr<StandaloneCache> Create(const KvModelShape& shape, const std::vector<KvFormat>& formats,
                                                int64_t max_tokens);
  static absl::StatusOr<StandaloneCache> Create(const KvModelShape& shape, const KvFormat& format, int64_t max_tokens) {
    return Create(shape, std::vector<KvFormat>{format}, max_tokens);
  }
  // The first (or only) sequence.
  SequenceKvCache& operator*() const { return *caches_[0]; }
  SequenceKvCache* operator->() const { return caches_[0].get(); }
  SequenceKvCache& sequence(size_t i) const { return *caches_[i]; }
  size_t size() const { return caches_.size(); }
  KvCacheManager& manager() const { return *manager_; }

 private:
  std::unique_ptr<KvCacheManager> manager_;  // declared first: outlives the sequences' pages
  std::vector<std::unique_ptr<SequenceKvCache>> caches_;
};

}  // namespace squat::kv
