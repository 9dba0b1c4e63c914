// The paged KV cache: one page pool carved from a single allocation, the attention backend
// that reads and writes it, and per-sequence caches in fp16 (full precision), kivi, squat
// (pre-RoPE keys) or squat-post format. A sequence cache owns its pages and its window state
// machine; the step protocol that drives it (one StepBatch per engine step, one attention call
// per layer) is kvcache/step_batch.h and kvcache/attention_backend.h.
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
  // The model's RoPE table (kvcache/rope.h): float32 [positions, head_dim]; positions at or
  // beyond its rows cannot be cached. Required.
  at::Tensor rope_table;
};

struct PoolStats {
  int64_t page_bytes = 0;
  int64_t total_pages = 0;
  int64_t used_pages = 0;
  int64_t total_bytes() const { return page_bytes * total_pages; }
  int64_t used_bytes() const { return page_bytes * used_pages; }
};

class AttentionBackend;
class PagePool;
class SequenceKvCache;
class StepPlanner;
struct SequenceStep;
// A sequence's SQuat compensation state (opaque; holds its pool pages while referenced).
struct SquatSubspace;

// What a preempted sequence keeps so that its recomputation reproduces its first run, and how
// it must be recomputed. Opaque to its holder (the scheduler): it may hold pool pages (a SQuat
// subspace) until Release.
class ResumeState {
 public:
  ResumeState() = default;
  // Tokens to feed as the recomputed sequence's prompt, out of `known_tokens` whose first
  // `prompt_tokens` were its original prompt; the rest are fed one per step. Full precision:
  // all of them (prefill attention computes what the decode steps computed). Quantized: the
  // original prompt only, because its decode steps attended over quantized keys.
  int64_t RecomputePrefill(int64_t prompt_tokens, int64_t known_tokens) const {
    return replays_decode_ ? prompt_tokens : known_tokens;
  }
  // Pool pages that only this handle keeps in use (0 when it holds none, or when they are
  // shared with the manager).
  int64_t pages() const;
  // Lets the pages go; the recomputation then builds its state anew (its codes may differ).
  void Release() { subspace_.reset(); }

 private:
  friend class PagedKvCacheManager;
  bool replays_decode_ = false;
  std::shared_ptr<const SquatSubspace> subspace_;
};

class KvCacheManager {
 public:
  // One allocation of pool_bytes on shape.device; page size chosen from default_format.
  static absl::StatusOr<std::unique_ptr<KvCacheManager>> Create(const KvModelShape& shape,
                                                                const KvFormat& default_format,
                                                                int64_t pool_bytes);
  // The bytes Create takes for a pool of pool_bytes: whole pages of the default format's page
  // (kvcache/page_geometry.h). Needs no RoPE table (the start-up memory estimate calls it).
  static int64_t AllocatedPoolBytes(const KvModelShape& shape, const KvFormat& default_format, int64_t pool_bytes);
  virtual ~KvCacheManager() = default;

  // Reserves the pages a sequence of up to max_tokens needs now (plus residual windows and
  // SQuat state); SequenceKvCache::Reserve grows it later. RESOURCE_EXHAUSTED when the pool
  // cannot hold it now, INVALID_ARGUMENT when it never could. Pages return to the pool when
  // the cache is destroyed. `resume` (from Preempt) makes a recomputed sequence quantize with
  // the state of its first run (INVALID_ARGUMENT if that state does not fit the format).
  // Quantized formats also hold, until the prompt completes, full-precision staging for every
  // reserved token (plus the query Gram when they build their subspace): reserve the prompt
  // (or each chunk) first and grow the reservation after the prompt, not prompt + budget upfront.
  virtual absl::StatusOr<std::unique_ptr<SequenceKvCache>> NewSequence(const KvFormat& format, int64_t max_tokens,
                                                                       const ResumeState* resume = nullptr) = 0;
  // Frees a sequence's pages and returns what its recomputation needs.
  virtual ResumeState Preempt(std::unique_ptr<SequenceKvCache> cache) = 0;

  virtual PoolStats stats() const = 0;
  virtual const KvFormat& default_format() const = 0;
  virtual const KvModelShape& shape() const = 0;
  virtual const PagePool& pool() const = 0;
  virtual std::shared_ptr<const PagePool> shared_pool() const = 0;
  // The attention backend of this pool (CUDA kernels, or the ATen reference).
  virtual AttentionBackend& backend() = 0;
  // Stored bytes per token over all layers, keys + values, codes + metadata (residual
  // windows and SQuat state excluded: they are per sequence, not per token).
  virtual double BytesPerToken(const KvFormat& format) const = 0;
  // Tokens of this format the whole pool holds for one sequence once its prompt is complete
  // (residual/state included; prompt staging excluded, so it is reached through Reserve); 0
  // when one page holds no whole block of it. The format must be valid (ValidateKvFormat):
  // kvcache/format_catalogue.h resolves a request's format and asks both capacities once.
  virtual int64_t CapacityTokens(const KvFormat& format) const = 0;
  // The longest prompt of this format that NewSequence could ever reserve in the empty pool
  // (quantized formats stage the prompt in full precision until it is complete).
  virtual int64_t PromptCapacityTokens(const KvFormat& format) const = 0;
  // Page ids a step of up to `max_sequences` sequences can reference (StepBatch's capacity):
  // every page once, plus the SQuat state pages that sequences may share.
  virtual int64_t StepPageIds(int64_t max_sequences) const = 0;
};

// One sequence's pages and window state. Driven by StepBatch: each step plans what the step
// does to it (Plan), the attention backend reads and writes its pages, and Commit advances it.
// The prompt may come in several chunks (prompt_complete = false for all but the last): its
// attention is full precision over the whole prompt so far, and quantized formats keep the
// prompt in full precision until it is complete (spec pitfall 14: the SQuat subspace, built
// from all prompt chunks' queries, is fixed before any prompt key is quantized). After the
// prompt, quantized formats take one token per step (decode); fp16 takes any number.
class SequenceKvCache {
 public:
  virtual ~SequenceKvCache() = default;
  virtual int64_t length() const = 0;  // tokens committed
  virtual const KvFormat& format() const = 0;
  virtual bool prompt_complete() const = 0;

  // Grows the reservation so that total_tokens fit (no-op if they already do).
  // RESOURCE_EXHAUSTED, with nothing taken, when the pool lacks the pages now;
  // INVALID_ARGUMENT, with nothing taken, when the whole pool could never hold them.
  // Planning a step past reserved_tokens() throws and changes nothing.
  virtual absl::Status Reserve(int64_t total_tokens) = 0;
  virtual int64_t reserved_tokens() const = 0;

  // Pages held (codes, residuals, prompt staging, SQuat state). A shared subspace's state
  // belongs to the manager (kept for its lifetime) and is not counted here; a reused one counts
  // in the sequence using it, and while only ResumeState handles hold one, in no sequence.
  virtual int64_t pages() const = 0;

  // ---- the step protocol (kvcache/step_batch.cpp and the attention backends only)
  // What a step of num_tokens rows does to this sequence: throws (changing nothing) on misuse
  // or past the reservation. Page tables and quantization tasks go through `planner`.
  virtual void Plan(int64_t num_tokens, bool prompt_complete, StepPlanner& planner, SequenceStep& step) const = 0;
  // The queries [H_q, T, d] of a prompt chunk's rows of `layer` (for the SQuat subspace).
  virtual void AddPromptQueries(int64_t layer, const at::Tensor& q_rot) = 0;
  // Before the step's quantization tasks run: builds the SQuat subspace of a completing prompt.
  virtual void PrepareTasks(const SequenceStep& step) = 0;
  // After them: the window state advances (a completed prompt's tail moves into its windows
  // and its staging pages return to the pool).
  virtual void Commit(const SequenceStep& step) = 0;
  // The SQuat state once it is built (null for fp16 and kivi, or before a new state's prompt
  // completes; a reused state is built from the start).
  virtual std::shared_ptr<const SquatSubspace> subspace() const = 0;
};

}  // namespace squat::kv
