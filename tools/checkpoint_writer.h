// Streams random weights into .safetensors shards: tensors are generated in fixed-size chunks
// across threads and written as they are produced, so memory use does not grow with the model.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint/safetensors.h"
#include "tools/checkpoint_spec.h"

namespace squat::checkpoint {

struct ShardFile {
  std::string file_name;                   // model.safetensors or model-0000i-of-0000n.safetensors
  std::vector<const TensorSpec*> tensors;  // in model order
};

// Splits the tensors, in order, into `shards` contiguous groups of similar byte size.
absl::StatusOr<std::vector<ShardFile>> PlanShards(const std::vector<TensorSpec>& tensors, int64_t shards,
                                                  size_t element_size);

struct WeightOptions {
  uint64_t seed = 0;
  double init_std = 0.02;
  DType dtype = DType::kF32;
  int threads = 1;
};

// Prints one line per finished tensor group when enabled (large models).
class Progress {
 public:
  Progress(uint64_t total_bytes, bool enabled);
  void Add(uint64_t bytes) { done_bytes_ += bytes; }
  void GroupDone(const std::string& group, const std::string& file_name);

 private:
  uint64_t total_bytes_;
  uint64_t done_bytes_ = 0;
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

// Writes one shard. Tensor values depend only on (seed, name, element index), never on the
// thread count or the shard layout.
absl::Status WriteShard(const std::string& path, const ShardFile& shard, const WeightOptions& options,
                        Progress* progress);

}  // namespace squat::checkpoint
