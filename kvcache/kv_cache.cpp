#include "kvcache/kv_cache.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "kvcache/attention_backend.h"
#include "kvcache/fp16_sequence_cache.h"
#include "kvcache/page_geometry.h"
#include "kvcache/page_pool.h"
#include "kvcache/quantized_sequence_cache.h"
#include "kvcache/squat_state.h"

namespace squat::kv {

absl::StatusOr<KvMethod> ParseKvMethod(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(std::string(name));
  if (lower == "fp16") return KvMethod::kFp16;
  if (lower == "kivi") return KvMethod::kKivi;
  if (lower == "squat" || lower == "squat-pre" || lower == "squat_pre") return KvMethod::kSquatPre;
  if (lower == "squat-post" || lower == "squat_post") return KvMethod::kSquatPost;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV cache method '", std::string(name), "' (expected fp16, kivi, squat or squat-post)"));
}

const char* KvMethodName(KvMethod method) {
  switch (method) {
    case KvMethod::kFp16: return "fp16";
    case KvMethod::kKivi: return "kivi";
    case KvMethod::kSquatPre: return "squat";
    case KvMethod::kSquatPost: return "squat-post";
  }
  return "unknown";
}

absl::Status ValidateKvFormat(const KvFormat& format, int64_t head_dim) {
  if (head_dim <= 0) return absl::InvalidArgumentError(absl::StrCat("head_dim must be > 0, got ", head_dim));
  if (!IsQuantized(format.method)) return absl::OkStatus();
  const std::string method = KvMethodName(format.method);
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("KV format ", method, ": ", parts...));
  };
  for (const auto& [name, bits] : {std::pair<const char*, int>{"k_bits", format.k_bits}, {"v_bits", format.v_bits}}) {
    if (bits != 2 && bits != 4) return bad(name, " must be 2 or 4, got ", bits);
  }
  const int64_t g_tokens = format.group_size, r = format.residual_length;
  if (g_tokens <= 0) return bad("group_size must be > 0, got ", g_tokens);
  if (r <= 0) return bad("residual_length must be > 0, got ", r);
  if (r % g_tokens != 0) {
    return bad("residual_length (", r, ") must be a multiple of group_size (", g_tokens, ")");
  }
  for (const auto& [name, bits] : {std::pair<const char*, int>{"k_bits", format.k_bits}, {"v_bits", format.v_bits}}) {
    const int per_word = 32 / bits;
    if (g_tokens % per_word != 0 || r % per_word != 0) {
      return bad("group_size (", g_tokens, ") and residual_length (", r, ") must be multiples of 32 / ", name,
                 " = ", per_word);
    }
  }
  if (head_dim % g_tokens != 0) {
    return bad("head_dim (", head_dim, ") must be a multiple of group_size (", g_tokens, ")");
  }
  if (HasSquatState(format.method)) {
    if (format.block_size <= 0 || head_dim % format.block_size != 0) {
      return bad("head_dim (", head_dim, ") must be a multiple of block_size (", format.block_size, ")");
    }
    if (format.subspace_dim <= 0) return bad("subspace_dim must be > 0, got ", format.subspace_dim);
    if (!(format.lambda >= 0) || !std::isfinite(format.lambda)) {
      return bad("lambda must be finite and >= 0, got ", format.lambda);
    }
  }
  return absl::OkStatus();
}

namespace {

std::string Describe(const KvFormat& f) {
  if (!IsQuantized(f.method)) return KvMethodName(f.method);
  return absl::StrCat(KvMethodName(f.method), " (k_bits ", f.k_bits, ", v_bits ", f.v_bits, ", group_size ",
                      f.group_size, ", residual_length ", f.residual_length, ")");
}

// The shape's sizes come from a validated ModelConfig (runtime/checkpoint/model_config.h); what is the
// cache's own to check is the RoPE table and dtype it is handed.
absl::Status CheckRopeTable(const KvModelShape& s) {
  if (!at::isFloatingType(s.compute_dtype)) {
    return absl::InvalidArgumentError("KV cache: compute dtype must be floating point");
  }
  if (!s.rope_table.defined() || s.rope_table.dim() != 2 || s.rope_table.size(0) <= 0 ||
      s.rope_table.size(1) != s.head_dim || s.rope_table.scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: the RoPE table must be float32 [positions, head_dim = ",
                                                   s.head_dim, "]"));
  }
  return absl::OkStatus();
}

// Sequences of a format with shared_subspace share one SquatSubspace per (g, r, lambda): both
// squat variants build it from q_rot, so pre and post can share too. The state is built, layer
// by layer, by the first prompt that completes, and the manager keeps it (and its pages) for its
// whole lifetime, even when no sequence uses it.
using SharedStateKey = std::tuple<int64_t, int64_t, double>;

}  // namespace

int64_t ResumeState::pages() const {
  return subspace_ && !subspace_->manager_shared() ? subspace_->pages() : 0;
}

class PagedKvCacheManager final : public KvCacheManager {
 public:
  PagedKvCacheManager(KvModelShape shape, KvFormat default_format, std::shared_ptr<PagePool> pool)
      : shape_(std::move(shape)), default_format_(default_format), pool_(std::move(pool)),
        backend_(AttentionBackend::Create(shape_, pool_)) {}

  absl::StatusOr<std::unique_ptr<SequenceKvCache>> NewSequence(const KvFormat& format, int64_t max_tokens,
                                                               const ResumeState* resume) override;
  ResumeState Preempt(std::unique_ptr<SequenceKvCache> cache) override {
    ResumeState resume;
    if (!cache) return resume;
    resume.replays_decode_ = IsQuantized(cache->format().method);
    resume.subspace_ = cache->subspace();
    cache.reset();  // its pages go back to the pool now
    return resume;
  }
  const KvModelShape& shape() const override { return shape_; }
  const PagePool& pool() const override { return *pool_; }
  std::shared_ptr<const PagePool> shared_pool() const override { return pool_; }
  AttentionBackend& backend() override { return *backend_; }
  int64_t StepPageIds(int64_t max_sequences) const override {
    KvFormat squat = default_format_;
    squat.method = KvMethod::kSquatPre;
    if (squat.block_size <= 0 || shape_.head_dim % squat.block_size != 0) squat.block_size = shape_.head_dim / 2;
    return pool_->total_pages() + max_sequences * SquatStatePages(shape_, squat, pool_->page_bytes());
  }

  PoolStats stats() const override {
    PoolStats s;
    s.page_bytes = pool_->page_bytes();
    s.total_pages = pool_->total_pages();
    s.used_pages = pool_->used_pages();
    return s;
  }
  const KvFormat& default_format() const override { return default_format_; }
  double BytesPerToken(const KvFormat& format) const override { return FormatBytesPerToken(shape_, format); }
  int64_t CapacityTokens(const KvFormat& format) const override {
    return CapacityForPages(shape_, format, pool_->page_bytes(), pool_->total_pages());
  }
  int64_t PromptCapacityTokens(const KvFormat& format) const override {
    const int64_t per_page = TokensPerPage(shape_, format, pool_->page_bytes());
    if (per_page == 0) return 0;
    // Binary search on what NewSequence reserves (monotonic in the token count); a sequence
    // that builds its own subspace needs the most.
    auto fits = [&](int64_t tokens) {
      return PromptPages(format, tokens, HasSquatState(format.method)) <= pool_->total_pages();
    };
    int64_t lo = 0, hi = pool_->total_pages() * per_page + format.residual_length + 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (fits(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  }

 private:
  static SharedStateKey KeyOf(const KvFormat& f) { return {f.block_size, f.subspace_dim, f.lambda}; }
  // Pages NewSequence(format, tokens) reserves.
  int64_t PromptPages(const KvFormat& format, int64_t tokens, bool collects_queries) const {
    return PeakPagesForSequence(shape_, format, pool_->page_bytes(), tokens, collects_queries);
  }

  KvModelShape shape_;
  KvFormat default_format_;
  std::shared_ptr<PagePool> pool_;
  std::mutex shared_mutex_;
  std::map<SharedStateKey, std::shared_ptr<SquatSubspace>> shared_states_;
  std::unique_ptr<AttentionBackend> backend_;
};

absl::StatusOr<std::unique_ptr<SequenceKvCache>> PagedKvCacheManager::NewSequence(const KvFormat& format,
                                                                                  int64_t max_tokens,
                                                                                  const ResumeState* resume) {
  const std::shared_ptr<const SquatSubspace> reuse_subspace = resume ? resume->subspace_ : nullptr;
  if (absl::Status valid = ValidateKvFormat(format, shape_.head_dim); !valid.ok()) return valid;
  if (max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: max_tokens must be > 0, got ", max_tokens));
  }
  const int64_t page_bytes = pool_->page_bytes();
  const int64_t per_page = TokensPerPage(shape_, format, page_bytes);
  if (per_page == 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV format ", Describe(format), " is unavailable with this pool: ",
                                                   "one page (", page_bytes, " bytes) holds no whole block of it"));
  }
  const bool squat = HasSquatState(format.method);
  if (reuse_subspace) {
    if (!squat) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV cache: a reused SQuat subspace needs a squat format, got ", Describe(format)));
    }
    if (&reuse_subspace->pool() != pool_.get()) {
      return absl::InvalidArgumentError("KV cache: the reused SQuat subspace belongs to another cache manager");
    }
    if (absl::Status usable = reuse_subspace->CheckUsableFor(shape_, format); !usable.ok()) return usable;
  }

  std::lock_guard<std::mutex> lock(shared_mutex_);
  std::shared_ptr<SquatSubspace> shared;
  if (squat && format.shared_subspace && !reuse_subspace) {
    auto it = shared_states_.find(KeyOf(format));
    if (it != shared_states_.end()) shared = it->second;
  }
  const bool new_state = squat && !reuse_subspace && !shared;
  // A sequence collects its prompt's queries unless its subspace is given or already built.
  const bool collects_queries = new_state || (shared && !shared->all_ready());

  const SequencePages steady = PagesForSequence(shape_, format, page_bytes, max_tokens);
  const int64_t staging = PromptStagingPages(shape_, format, page_bytes, max_tokens);
  const int64_t gram = collects_queries ? QueryGramPages(shape_, page_bytes) : 0;
  const int64_t pending = collects_queries ? PendingQueryPages(shape_, page_bytes) : 0;
  // The SQuat state counts even when shared or reused: it occupies the pool either way.
  const int64_t prompt_need = PromptPages(format, max_tokens, collects_queries);
  if (prompt_need > pool_->total_pages()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: ", max_tokens, " tokens of ", Describe(format), " need ", prompt_need, " pages",
        staging > 0 ? " (full-precision staging of the prompt included)" : "", ", the pool has ",
        pool_->total_pages(), " (", CapacityTokens(format), " tokens once the prompt is complete)"));
  }
  const int64_t own_state = new_state ? steady.state : 0;
  absl::StatusOr<std::vector<int64_t>> pages =
      pool_->Allocate(steady.data + steady.residual + own_state + staging + gram + pending);
  if (!pages.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: no room now for ", max_tokens, " tokens of ",
                                                     Describe(format), ": ", pages.status().message()));
  }
  // Split the allocation by purpose.
  std::vector<int64_t>& ids = *pages;
  auto take = [&](int64_t count) {
    std::vector<int64_t> part(ids.begin(), ids.begin() + count);
    ids.erase(ids.begin(), ids.begin() + count);
    return PageLease(pool_, std::move(part));
  };
  if (!IsQuantized(format.method)) {
    return std::unique_ptr<SequenceKvCache>(new Fp16SequenceCache(shape_, format, max_tokens, pool_, take(steady.data)));
  }
  QuantizedSequenceLeases leases;
  leases.data = take(steady.data);
  leases.residual = take(steady.residual);
  std::shared_ptr<SquatSubspace> state = shared;
  if (new_state) {
    state = std::make_shared<SquatSubspace>(take(own_state), shape_, format, /*manager_shared=*/format.shared_subspace);
    if (format.shared_subspace) shared_states_.emplace(KeyOf(format), state);
  }
  leases.staging = take(staging);
  leases.gram = take(gram);
  leases.pending_queries = take(pending);
  std::shared_ptr<const SquatSubspace> used = reuse_subspace ? reuse_subspace : state;
  return std::unique_ptr<SequenceKvCache>(new QuantizedSequenceCache(
      shape_, format, max_tokens, pool_, std::move(leases), std::move(used), collects_queries ? state : nullptr));
}

int64_t KvCacheManager::AllocatedPoolBytes(const KvModelShape& shape, const KvFormat& default_format,
                                           int64_t pool_bytes) {
  const int64_t page_bytes = DefaultPageBytes(shape, default_format);
  return pool_bytes / page_bytes * page_bytes;
}

absl::StatusOr<std::unique_ptr<KvCacheManager>> KvCacheManager::Create(const KvModelShape& shape,
                                                                        const KvFormat& default_format,
                                                                        int64_t pool_bytes) {
  if (absl::Status s = CheckRopeTable(shape); !s.ok()) return s;
  if (absl::Status s = ValidateKvFormat(default_format, shape.head_dim); !s.ok()) return s;
  const int64_t page_bytes = DefaultPageBytes(shape, default_format);
  const int64_t total_pages = AllocatedPoolBytes(shape, default_format, pool_bytes) / page_bytes;
  if (total_pages <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: pool of ", pool_bytes,
                                                   " bytes is smaller than one page (", page_bytes, " bytes)"));
  }
  absl::StatusOr<std::shared_ptr<PagePool>> pool = PagePool::Create(page_bytes, total_pages, shape.device);
  if (!pool.ok()) return pool.status();
  KvModelShape stored = shape;
  // "cuda" names no index; the allocation's device does (cuda:N), and inputs are checked against it.
  stored.device = (*pool)->device();
  stored.rope_table = stored.rope_table.to(stored.device).contiguous();
  return std::unique_ptr<KvCacheManager>(new PagedKvCacheManager(std::move(stored), default_format, *std::move(pool)));
}

}  // namespace squat::kv
