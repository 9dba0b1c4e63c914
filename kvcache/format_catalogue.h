// The KV formats one engine serves: the defaults from its flags, what a request may override
// (method and bits), and the list GetModelInfo shows. A request's format is resolved and
// validated here once, with its capacity in the pool; nothing downstream re-derives it.
// Internal to runtime/ and kvcache/ (includes ATen through kv_cache.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"

namespace squat::kv {

// The engine-wide format parameters (the server's --kv-* flags).
struct FormatDefaults {
  std::string method = "squat";  // ParseKvMethod's names
  int k_bits = 2;
  int v_bits = 2;
  int64_t group_size = 32;       // G
  int64_t residual_length = 32;  // R
  int64_t block_size = 0;        // g; 0: head_dim / 2 (two channel blocks)
  int64_t subspace_dim = 60;     // r
  double lambda = 1e-3;
  bool shared_subspace = false;
};

// What a request asks for: an empty method or a 0 bit width keeps the default.
struct FormatRequest {
  std::string method;
  int k_bits = 0;
  int v_bits = 0;
};

// A format this pool can serve, and what the pool holds of it.
struct ResolvedFormat {
  KvFormat format;
  std::string label;                   // KvFormatLabel(format)
  int64_t capacity_tokens = 0;         // one sequence in the whole pool, once its prompt is complete
  int64_t prompt_capacity_tokens = 0;  // the longest prompt the empty pool can stage
  bool is_default = false;
};

// The metrics and log label of a format: "fp16", or "<method>-k<K>v<V>" (e.g. "squat-k2v2").
std::string KvFormatLabel(const KvFormat& format);

class FormatCatalogue {
 public:
  // INVALID_ARGUMENT naming the parameter when the default format is not valid for head_dim.
  static absl::StatusOr<FormatCatalogue> Create(const FormatDefaults& defaults, int64_t head_dim);

  const KvFormat& default_format() const { return default_format_; }

  // The request's method and bits over the defaults, validated, with its capacity in
  // `manager`'s pool. INVALID_ARGUMENT for an unknown method, bits on fp16, a format the
  // spec rejects, or one whose blocks do not fit the pool's page.
  absl::StatusOr<ResolvedFormat> Resolve(const FormatRequest& request, const KvCacheManager& manager) const;

  // fp16, each quantized method at 2 and 4 bits (K = V), and the default when its bits differ:
  // those valid here that the pool can hold.
  std::vector<ResolvedFormat> Listed(const KvCacheManager& manager) const;

 private:
  FormatCatalogue(FormatDefaults defaults, int64_t head_dim, KvFormat default_format)
      : defaults_(std::move(defaults)), head_dim_(head_dim), default_format_(default_format) {}
  // The defaults' parameters with this method and bits.
  KvFormat Make(KvMethod method, int k_bits, int v_bits) const;
  // Capacity and label of a valid format; capacity 0 when the pool cannot hold it.
  ResolvedFormat Describe(const KvFormat& format, const KvCacheManager& manager) const;

  FormatDefaults defaults_;
  int64_t head_dim_ = 0;
  KvFormat default_format_;
};

}  // namespace squat::kv
