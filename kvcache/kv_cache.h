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
// A sequence's SQuat compensation state (opaque; holds its pool pages while referenced).
struct SquatSubspace;

class KvCacheManager {
 public:
  // One allocation of pool_bytes on shape.device; page size chosen from default_format.
  static absl::StatusOr<std::unique_ptr<KvCacheManager>> Create(const KvModelShape& shape,
                                                                const KvFormat& default_format,
                                                                int64_t pool_bytes);
  virtual ~KvCacheManager() = default;

  // Reserves the pages a sequence of up to max_tokens needs now (plus residual windows and
  // SQuat state); SequenceKvCache::Reserve grows it later. RESOURCE_EXHAUSTED when the pool
  // cannot hold it now, INVALID_ARGUMENT when it never could. Pages return to the pool when
  // the cache is destroyed. `reuse_subspace` (from SequenceKvCache::subspace() of a preempted
  // sequence) makes the new sequence quantize with that subspace instead of building one from
  // its prompt, so that a recomputed sequence matches its first run (INVALID_ARGUMENT unless the
  // format is squat or squat-post with the same g, r and lambda, on this manager's pool).
  // Quantized formats also hold, until the prompt completes, full-precision staging for every
  // reserved token (plus the query Gram when they build their subspace): reserve the prompt
  // (or each chunk) first and grow the reservation after the prompt, not prompt + budget upfront.
  virtual absl::StatusOr<std::unique_ptr<SequenceKvCache>> NewSequence(
      const KvFormat& format, int64_t max_tokens,
      std::shared_ptr<const SquatSubspace> reuse_subspace = nullptr) = 0;

  virtual PoolStats stats() const = 0;
  virtual const KvFormat& default_format() const = 0;
  // Stored bytes per token over all layers, keys + values, codes + metadata (residual
  // windows and SQuat state excluded: they are per sequence, not per token).
  virtual double BytesPerToken(const KvFormat& format) const = 0;
  // Tokens of this format the whole pool holds for one sequence once its prompt is complete
  // (residual/state included; prompt staging excluded, so it is reached through Reserve).
  virtual int64_t CapacityTokens(const KvFormat& format) const = 0;
  // The longest prompt of this format that NewSequence could ever reserve in the empty pool
  // (quantized formats stage the prompt in full precision until it is complete).
  virtual int64_t PromptCapacityTokens(const KvFormat& format) const = 0;
};

class SequenceKvCache {
 public:
  virtual ~SequenceKvCache() = default;
  virtual int64_t length() const = 0;  // tokens committed
  virtual const KvFormat& format() const = 0;

  // Attention of layer `layer` for T new tokens at positions [length(), length() + T):
  // q_rot [H_q, T, d] (RoPE applied), k_pre / k_rot [H_kv, T, d] (before / after RoPE), v
  // [H_kv, T, d], all in the compute dtype. Stores the new keys and values (quantizing and
  // flushing per spec 3 and 5) and returns the attention output [H_q, T, d]. The prompt may
  // come in several chunks (any T): their attention is full precision over the whole prompt so
  // far, and quantized formats keep the prompt in full precision until the prompt is complete
  // (spec pitfall 14: the SQuat subspace, built from all prompt chunks' q_rot, is fixed before
  // any prompt key is quantized). After the prompt, calls must have T == 1 (decode); the fp16
  // format alone accepts any T throughout.
  virtual at::Tensor Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre,
                            const at::Tensor& k_rot, const at::Tensor& v) = 0;
  // Advances length() by T once every layer has attended. prompt_complete = false marks a
  // prompt chunk with more to come; the default ends the prompt (builds the subspace and
  // quantizes the prompt per spec 3) on the first Commit.
  virtual void Commit(int64_t num_tokens, bool prompt_complete = true) = 0;

  // Grows the reservation so that total_tokens fit (no-op if they already do).
  // RESOURCE_EXHAUSTED, with nothing taken, when the pool lacks the pages now;
  // INVALID_ARGUMENT, with nothing taken, when the whole pool could never hold them.
  // Attend past reserved_tokens() throws and changes nothing.
  virtual absl::Status Reserve(int64_t total_tokens) = 0;
  virtual int64_t reserved_tokens() const = 0;

  // The SQuat state once the prompt is complete (null for fp16 and kivi, or before).
  virtual std::shared_ptr<const SquatSubspace> subspace() const = 0;

  // Pages held (codes, residuals, prompt staging, SQuat state). A shared subspace's state
  // belongs to the manager (kept for its lifetime) and is not counted here; a reused one counts
  // in the sequence using it, and while only subspace() handles hold one, in no sequence.
  virtual int64_t pages() const = 0;
};

}  // namespace squat::kv
