// EstimateServingMemory (runtime/engine/engine.h): the loader's, the pool's and the workspace's own
// rules applied to the config and the checkpoint's headers, nothing loaded.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "kvcache/format_catalogue.h"
#include "kvcache/kv_cache.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/options.h"
#include "runtime/model/llama_model.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/model/model_memory.h"
#include "runtime/checkpoint/safetensors.h"

namespace squat {

absl::StatusOr<ServingMemoryEstimate> EstimateServingMemory(const EngineOptions& options) {
  if (absl::Status valid = ValidateEngineOptions(options); !valid.ok()) return valid;
  const std::filesystem::path dir(options.model_dir);
  absl::StatusOr<ModelConfig> config = LoadModelConfig((dir / "config.json").string());
  if (!config.ok()) return config.status();
  absl::StatusOr<kv::FormatCatalogue> formats = kv::FormatCatalogue::Create(FormatDefaultsOf(options), config->head_dim);
  if (!formats.ok()) return formats.status();
  absl::StatusOr<bool> cuda = IsCudaDevice(options.device);
  if (!cuda.ok()) return cuda.status();
  // "auto" follows the stored embedding's dtype: read the checkpoint's headers (the weights stay
  // unread). A named dtype needs no checkpoint, so a config.json alone can be sized.
  DType stored = DType::kF32;
  if (options.dtype == "auto") {
    absl::StatusOr<std::unique_ptr<CheckpointReader>> checkpoint = CheckpointReader::Open(options.model_dir);
    if (!checkpoint.ok()) return checkpoint.status();
    const TensorView* embed = (*checkpoint)->Find("model.embed_tokens.weight");
    if (embed == nullptr) return absl::NotFoundError("checkpoint is missing tensor 'model.embed_tokens.weight'");
    stored = embed->dtype;
  }

  ServingMemoryEstimate estimate;
  absl::StatusOr<std::string> dtype = LoadedWeightDtype(options.dtype, *cuda, stored);
  if (!dtype.ok()) return dtype.status();
  estimate.weight_dtype = *dtype;
  const int64_t element = DtypeBytes(*dtype);
  absl::StatusOr<int64_t> weights = WeightBytes(*config, element);
  if (!weights.ok()) return absl::OutOfRangeError(absl::StrCat(options.model_dir, ": ", weights.status().message()));
  estimate.weight_bytes = *weights;
  estimate.workspace_bytes = WorkspaceBytes(*config, element, options.max_num_batched_tokens, options.max_num_seqs,
                                            MaxModelLen(options, *config));
  estimate.kv_pool_from_free_memory = *cuda && options.kv_pool_bytes == 0;
  if (!estimate.kv_pool_from_free_memory) {
    const int64_t requested = options.kv_pool_bytes > 0 ? options.kv_pool_bytes : kDefaultCpuKvPoolBytes;
    const kv::KvModelShape shape = KvShapeOf(*config, ScalarTypeOf(*dtype), at::kCPU);
    estimate.kv_pool_bytes = kv::KvCacheManager::AllocatedPoolBytes(shape, formats->default_format(), requested);
  }
  return estimate;
}

}  // namespace squat
