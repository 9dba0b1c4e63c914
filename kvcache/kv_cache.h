// The paged KV cache: one page pool carved from a single allocation, and per-sequence caches
// in fp16 (full precision), kivi, squat (pre-RoPE keys) or squat-post format.
// Internal to runtime/ and kvcache/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace squat::kv {

enum class KvMethod { kFp16, kKivi, kSquatPre, kSquatPost };

// Accepts "fp16", "kivi", "squat", "squat-pre", "squat-post" (and "squat_pre"/"squat_post").
absl::StatusOr<KvMethod> ParseKvMethod(std::string_view name);
const char* KvMethodName(KvMethod method);  // "fp16", "kivi", "squat", "squat-post"

struct KvFormat {
  KvMethod method = KvMethod::kSquatPre;
  int k_bits = 2;
  int v_bits = 2;
  int64_t group_size = 32;       // G
  int64_t residual_length = 32;  // R
  int64_t block_size = 64;       // g (SQuat channel block)
  int64_t subspace_dim = 60;     // r
  double lambda = 1e-3;
  bool shared_subspace = false;  // one subspace per engine (from the first prompt) vs per request
};

// Checks bits in {2, 4}, R % G == 0, G and R multiples of 32 / bits, d % G == 0,
// d % g == 0 (quantized methods only); messages name the parameter.
absl::Status ValidateKvFormat(const KvFormat& format, int64_t head_dim);

// Model facts the cache needs.
struct KvModelShape {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t num_attention_heads = 0;
  int64_t head_dim = 0;
  at::ScalarType compute_dtype = at::kFloat;  // full-precision storage (fp16 format, residuals)
  at::Device device = at::kCPU;
  at::Tensor inv_freq;  // [head_dim / 2] float32, scaling applied: RoPE for pre-RoPE keys
};

struct PoolStats {
  int64_t page_bytes = 0;
  int64_t total_pages = 0;
  int64_t used_pages = 0;
  int64_t total_bytes() const { return page_bytes * total_pages; }
  int64_t used_bytes() const { return page_bytes * used_pages; }
};

class SequenceKvCache;

class KvCacheManager {
 public:
  // One allocation of pool_bytes on shape.device; page size chosen from default_format.
  static absl::StatusOr<std::unique_ptr<KvCacheManager>> Create(const KvModelShape& shape,
                                                                const KvFormat& default_format,
                                                                int64_t pool_bytes);
  virtual ~KvCacheManager() = default;

  // Reserves every page a sequence of up to max_tokens needs (plus residual windows and SQuat
  // state); RESOURCE_EXHAUSTED when the pool cannot hold it now, INVALID_ARGUMENT when it never
  // could. Pages return to the pool when the cache is destroyed.
  virtual absl::StatusOr<std::unique_ptr<SequenceKvCache>> NewSequence(const KvFormat& format,
                                                                       int64_t max_tokens) = 0;

  virtual PoolStats stats() const = 0;
  virtual const KvFormat& default_format() const = 0;
  // Stored bytes per token over all layers, keys + values, codes + metadata (residual
  // windows and SQuat state excluded: they are per sequence, not per token).
  virtual double BytesPerToken(const KvFormat& format) const = 0;
  // Tokens of this format the whole pool holds for one sequence (residual/state included).
  virtual int64_t CapacityTokens(const KvFormat& format) const = 0;
};

class SequenceKvCache {
 public:
  virtual ~SequenceKvCache() = default;
  virtual int64_t length() const = 0;  // tokens committed
  virtual const KvFormat& format() const = 0;

  // Attention of layer `layer` for T new tokens at positions [length(), length() + T):
  // q_rot [H_q, T, d] (RoPE applied), k_pre / k_rot [H_kv, T, d] (before / after RoPE), v
  // [H_kv, T, d], all in the compute dtype. Stores the new keys and values (quantizing and
  // flushing per spec 3 and 5) and returns the attention output [H_q, T, d]. The first call
  // for a sequence is its prefill (full-precision causal attention over the prompt; the SQuat
  // subspace is built from q_rot); later calls must have T == 1 (decode).
  virtual at::Tensor Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                            const at::Tensor& k_rot, const at::Tensor& v) = 0;
  // Advances length() by T once every layer has attended.
  virtual void Commit(int64_t num_tokens) = 0;

  // Pages held (codes, residuals, SQuat state). A shared subspace's state belongs to the
  // manager (kept for its lifetime) and is not counted here.
  virtual int64_t pages() const = 0;
};

}  // namespace squat::kv
