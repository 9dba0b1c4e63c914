#include "kvcache/batched_decode.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "kvcache/page_geometry.h"
#include "kvcache/page_pool.h"

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/squat_kernels.h"
#endif

namespace squat::kv {

#ifdef SQUAT_HAVE_CUDA_KERNELS
namespace {

namespace kn = squat::kernels;

kn::DType KernelDType(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return kn::DType::kFloat32;
    case at::kHalf: return kn::DType::kFloat16;
    case at::kBFloat16: return kn::DType::kBFloat16;
    default: TORCH_CHECK(false, "batched decode: unsupported compute dtype ", dtype);
  }
}

kn::PoolLayout LayoutOf(const DecodePlan& p) {
  kn::PoolLayout L;
  L.pool = const_cast<void*>(p.pool->data());
  L.page_bytes = p.pool->page_bytes();
  L.num_layers = static_cast<int32_t>(p.shape.num_layers);
  L.kv_heads = static_cast<int32_t>(p.shape.num_kv_heads);
  L.q_heads = static_cast<int32_t>(p.shape.num_attention_heads);
  L.head_dim = static_cast<int32_t>(p.shape.head_dim);
  L.dtype = KernelDType(p.shape.compute_dtype);
  L.slots_per_page = static_cast<int32_t>(p.slots_per_page);
  if (IsQuantized(p.format.method)) {
    L.k_bits = p.format.k_bits;
    L.v_bits = p.format.v_bits;
    L.group_size = static_cast<int32_t>(p.format.group_size);
    L.residual_length = static_cast<int32_t>(p.format.residual_length);
    L.tokens_per_page = static_cast<int32_t>(p.tokens_per_page);
  }
  return L;
}

void Check(int error, const char* what) {
  TORCH_CHECK(error == 0, "batched decode: ", what, " failed: ", kn::ErrorString(error));
}

// Appends page ids to the table and returns where they start.
int32_t AddPages(std::vector<int32_t>& table, const std::vector<int64_t>& pages) {
  const int32_t at = static_cast<int32_t>(table.size());
  for (int64_t p : pages) table.push_back(static_cast<int32_t>(p));
  return at;
}

// Structs of int32 fields are copied into the int32 table as words.
template <typename T>
int32_t AddStructs(std::vector<int32_t>& table, const std::vector<T>& items) {
  static_assert(sizeof(T) % sizeof(int32_t) == 0 && alignof(T) == alignof(int32_t), "int32 fields only");
  const int32_t at = static_cast<int32_t>(table.size());
  table.resize(table.size() + items.size() * sizeof(T) / sizeof(int32_t));
  if (!items.empty()) std::memcpy(table.data() + at, items.data(), items.size() * sizeof(T));
  return at;
}

at::Tensor Upload(const std::vector<int32_t>& table, at::Device device) {
  // Pinned staging from LibTorch's caching host allocator (which keeps a block until the copy
  // that reads it has run), then an asynchronous copy: no host sync and no cudaMalloc per step.
  at::Tensor host = at::empty({static_cast<int64_t>(table.size())},
                              at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  std::memcpy(host.data_ptr<int32_t>(), table.data(), table.size() * sizeof(int32_t));
  return host.to(device, /*non_blocking=*/true);
}

// Sequences that share a page layout: one launch per layer.
using GroupKey = std::tuple<int, int, int, int64_t, int64_t, int64_t, int64_t>;
GroupKey KeyOf(const DecodePlan& p) {
  return {static_cast<int>(p.format.method), p.format.k_bits, p.format.v_bits, p.format.group_size,
          p.format.residual_length, p.tokens_per_page, p.format.block_size};
}

void AddKeyJobs(const DecodePlan& p, int32_t layer, int32_t src_pages, int64_t src_first_slot, int32_t dst_pages,
                int64_t dst_first_token, int64_t groups, int32_t state_pages, std::vector<kn::KeyGroupJob>& jobs) {
  for (int64_t g = 0; g < groups; ++g) {
    kn::KeyGroupJob job;
    job.layer = layer;
    job.src_pages = src_pages;
    job.src_first_slot = static_cast<int32_t>(src_first_slot + g * p.format.group_size);
    job.dst_pages = dst_pages;
    job.dst_first_token = static_cast<int32_t>(dst_first_token + g * p.format.group_size);
    job.state_pages = state_pages;
    jobs.push_back(job);
  }
}

// Split-KV partials: one float32 buffer per thread (the engine thread owns its device) and
// device, grown geometrically when a step needs more, so that steps allocate nothing. A step
// keeps its own reference, so growing never frees a buffer a queued kernel still uses (and the
// caching allocator orders the reuse on the stream).
at::Tensor SplitWorkspace(at::Device device, int64_t floats) {
  thread_local std::map<int, at::Tensor> buffers;
  at::Tensor& buffer = buffers[device.index()];
  if (!buffer.defined() || buffer.numel() < floats) {
    const int64_t grown = buffer.defined() ? std::max(floats, 2 * buffer.numel()) : floats;
    buffer = at::empty({grown}, at::TensorOptions().dtype(at::kFloat).device(device));
  }
  return buffer;
}

}  // namespace

struct DecodeBatch::Group {
  DecodePlan first;  // layout and format of the group
  kn::PoolLayout layout;
  kn::DecodeSplit split;          // split-KV of this group's launches
  int64_t workspace_at = 0;       // its partials' first float in the step's workspace
  int32_t num_sequences = 0, sequences_at = 0;
  int32_t num_key_jobs = 0, key_jobs_at = 0;
  int32_t num_value_jobs = 0, value_jobs_at = 0;
};

bool DecodeBatch::Supports(const SequenceKvCache& cache) {
  const auto* decodable = dynamic_cast<const BatchDecodable*>(&cache);
  if (decodable == nullptr) return false;
  DecodePlan plan;
  return decodable->PlanBatchedDecode(&plan) &&
         kn::LayoutSupported(LayoutOf(plan), IsQuantized(plan.format.method));
}

std::unique_ptr<DecodeBatch> DecodeBatch::Create(const std::vector<Entry>& entries, std::vector<bool>* accepted) {
  accepted->assign(entries.size(), false);
  std::unique_ptr<DecodeBatch> batch(new DecodeBatch());
  std::vector<int32_t> table;
  std::map<GroupKey, std::vector<std::pair<DecodePlan, int64_t>>> by_layout;
  const PagePool* pool = nullptr;
  for (size_t i = 0; i < entries.size(); ++i) {
    auto* decodable = dynamic_cast<BatchDecodable*>(entries[i].cache);
    DecodePlan plan;
    if (decodable == nullptr || !decodable->PlanBatchedDecode(&plan)) continue;
    if (!kn::LayoutSupported(LayoutOf(plan), IsQuantized(plan.format.method))) continue;
    if (pool != nullptr && plan.pool != pool) {
      accepted->assign(entries.size(), false);
      return nullptr;  // one pool per step
    }
    pool = plan.pool;
    (*accepted)[i] = true;
    batch->caches_.push_back(decodable);
    GroupKey key = KeyOf(plan);
    by_layout[key].emplace_back(std::move(plan), entries[i].row);
  }
  if (batch->caches_.empty()) return nullptr;
  std::vector<kn::DecodeSequence> all_sequences;
  std::vector<kn::KeyGroupJob> all_key_jobs;
  std::vector<kn::ValueTokenJob> all_value_jobs;
  std::vector<std::tuple<size_t, size_t, size_t>> counts;  // per group: sequences, key jobs, value jobs
  int64_t workspace_floats = 0;
  for (auto& [key, plans] : by_layout) {
    Group group;
    group.first = plans.front().first;
    group.layout = LayoutOf(group.first);
    const size_t seq0 = all_sequences.size(), key0 = all_key_jobs.size(), value0 = all_value_jobs.size();
    int64_t max_tokens = 0;
    for (const auto& [p, row] : plans) max_tokens = std::max(max_tokens, p.tokens);
    group.split = kn::ChooseDecodeSplit(static_cast<int32_t>(plans.size()), group.layout.kv_heads,
                                        static_cast<int32_t>(max_tokens));
    if (group.split.num_splits > 1) {
      group.workspace_at = workspace_floats;
      workspace_floats += kn::DecodeWorkspaceFloats(static_cast<int32_t>(plans.size()), group.layout.q_heads,
                                                    group.layout.head_dim, group.split.num_splits);
    }
    for (const auto& [p, row] : plans) {
      kn::DecodeSequence s;
      s.row = static_cast<int32_t>(row);
      s.data_pages = AddPages(table, p.data_pages);
      s.residual_pages = AddPages(table, p.residual_pages);
      s.tokens = static_cast<int32_t>(p.tokens);
      s.quantized_keys = static_cast<int32_t>(p.quantized_keys);
      s.quantized_values = static_cast<int32_t>(p.quantized_values);
      s.key_slot = static_cast<int32_t>(p.key_slot);
      all_sequences.push_back(s);
      const int32_t state = p.state_pages.empty() ? -1 : AddPages(table, p.state_pages);
      const int64_t layers = p.shape.num_layers;
      for (int32_t layer = 0; layer < layers; ++layer) {
        if (p.flush_keys) {
          AddKeyJobs(p, layer, s.residual_pages, 0, s.data_pages, p.quantized_keys,
                     p.format.residual_length / p.format.group_size, state, all_key_jobs);
        }
        if (p.slide_value) {
          kn::ValueTokenJob job;
          job.layer = layer;
          job.src_pages = s.residual_pages;
          job.src_slot = static_cast<int32_t>(p.quantized_values % ResidualSlots(p.format));
          job.dst_pages = s.data_pages;
          job.dst_token = static_cast<int32_t>(p.quantized_values);
          all_value_jobs.push_back(job);
        }
      }
    }
    counts.emplace_back(all_sequences.size() - seq0, all_key_jobs.size() - key0, all_value_jobs.size() - value0);
    batch->groups_.push_back(std::move(group));
  }
  // Each group's sequences and jobs are contiguous in the combined arrays.
  const int32_t sequences_at = AddStructs(table, all_sequences);
  const int32_t key_jobs_at = AddStructs(table, all_key_jobs);
  const int32_t value_jobs_at = AddStructs(table, all_value_jobs);
  int32_t seq_i = 0, key_i = 0, value_i = 0;
  for (size_t g = 0; g < batch->groups_.size(); ++g) {
    Group& group = batch->groups_[g];
    const auto [n_seq, n_key, n_value] = counts[g];
    group.num_sequences = static_cast<int32_t>(n_seq);
    group.sequences_at = sequences_at + seq_i * static_cast<int32_t>(sizeof(kn::DecodeSequence) / 4);
    group.num_key_jobs = static_cast<int32_t>(n_key);
    group.key_jobs_at = key_jobs_at + key_i * static_cast<int32_t>(sizeof(kn::KeyGroupJob) / 4);
    group.num_value_jobs = static_cast<int32_t>(n_value);
    group.value_jobs_at = value_jobs_at + value_i * static_cast<int32_t>(sizeof(kn::ValueTokenJob) / 4);
    seq_i += group.num_sequences;
    key_i += group.num_key_jobs;
    value_i += group.num_value_jobs;
  }
  batch->tables_ = Upload(table, pool->device());
  if (workspace_floats > 0) batch->workspace_ = SplitWorkspace(pool->device(), workspace_floats);
  return batch;
}

DecodeBatch::~DecodeBatch() = default;

void DecodeBatch::Attend(int64_t layer, const at::Tensor& q_rot, const at::Tensor& k_pre, const at::Tensor& k_rot,
                         const at::Tensor& v, const at::Tensor& out) {
  TORCH_CHECK(!finished_, "batched decode: Attend after Finish");
  auto check = [](const char* name, const at::Tensor& t, int64_t heads, const DecodePlan& p) {
    TORCH_CHECK(t.dim() == 3 && t.size(1) == heads && t.size(2) == p.shape.head_dim && t.stride(2) == 1 &&
                    t.stride(1) == p.shape.head_dim,
                "batched decode: ", name, " must be [rows, ", heads, ", ", p.shape.head_dim,
                "] with contiguous heads, got sizes ", t.sizes(), " strides ", t.strides());
    TORCH_CHECK(t.scalar_type() == p.shape.compute_dtype && t.device() == p.shape.device, "batched decode: ", name,
                " must be ", p.shape.compute_dtype, " on ", p.shape.device);
  };
  const int32_t* base = tables_.data_ptr<int32_t>();
  for (const Group& group : groups_) {
    const DecodePlan& p = group.first;
    TORCH_CHECK(layer >= 0 && layer < p.shape.num_layers, "batched decode: layer ", layer, " out of range");
    const bool pre_rope = p.format.method == KvMethod::kSquatPre;
    const at::Tensor& k_new = pre_rope ? k_pre : k_rot;
    check("q_rot", q_rot, p.shape.num_attention_heads, p);
    check("k", k_new, p.shape.num_kv_heads, p);
    check("v", v, p.shape.num_kv_heads, p);
    check("out", out, p.shape.num_attention_heads, p);
    kn::DecodeArgs args;
    args.layout = group.layout;
    args.layer = static_cast<int32_t>(layer);
    args.quantized = IsQuantized(p.format.method);
    args.pre_rope = pre_rope;
    args.sequences = reinterpret_cast<const kn::DecodeSequence*>(base + group.sequences_at);
    args.page_ids = base;
    args.num_sequences = group.num_sequences;
    args.q = q_rot.data_ptr();
    args.q_row_stride = q_rot.stride(0);
    args.k_new = k_new.data_ptr();
    args.k_row_stride = k_new.stride(0);
    args.v_new = v.data_ptr();
    args.v_row_stride = v.stride(0);
    args.inv_freq = pre_rope ? p.shape.inv_freq.data_ptr<float>() : nullptr;
    args.out = out.data_ptr();
    args.out_row_stride = out.stride(0);
    if (group.split.num_splits > 1) {
      args.num_splits = group.split.num_splits;
      args.split_tokens = group.split.split_tokens;
      args.workspace = workspace_.data_ptr<float>() + group.workspace_at;
    }
    Check(kn::PagedDecodeAttention(args, nullptr), "decode attention");
  }
}

void DecodeBatch::Finish() {
  TORCH_CHECK(!finished_, "batched decode: Finish twice");
  const int32_t* base = tables_.data_ptr<int32_t>();
  for (const Group& group : groups_) {
    Check(kn::QuantizeKeyGroups(group.layout, reinterpret_cast<const kn::KeyGroupJob*>(base + group.key_jobs_at),
                                group.num_key_jobs, base, static_cast<int32_t>(group.first.format.block_size), nullptr),
          "key flush");
    Check(kn::QuantizeValueTokens(group.layout,
                                  reinterpret_cast<const kn::ValueTokenJob*>(base + group.value_jobs_at),
                                  group.num_value_jobs, base, nullptr),
          "value slide");
  }
  for (BatchDecodable* cache : caches_) cache->CompleteBatchedDecode();
  finished_ = true;
}

bool QuantizeWithKernels(const DecodePlan& plan, const KernelQuantization& work) {
  if (!plan.shape.device.is_cuda() || !IsQuantized(plan.format.method)) return false;
  const kn::PoolLayout layout = LayoutOf(plan);
  if (!kn::LayoutSupported(layout, /*quantized=*/true)) return false;
  if (work.layers <= 0 || (work.key_groups <= 0 && work.value_tokens <= 0)) return true;
  std::vector<int32_t> table;
  const int32_t source = AddPages(table, work.source_pages);
  const int32_t data = AddPages(table, plan.data_pages);
  const int32_t state = plan.state_pages.empty() ? -1 : AddPages(table, plan.state_pages);
  std::vector<kn::KeyGroupJob> key_jobs;
  std::vector<kn::ValueTokenJob> value_jobs;
  for (int64_t layer = work.first_layer; layer < work.first_layer + work.layers; ++layer) {
    AddKeyJobs(plan, static_cast<int32_t>(layer), source, work.key_source_slot, data, work.key_first_token,
               work.key_groups, state, key_jobs);
    for (int64_t t = 0; t < work.value_tokens; ++t) {
      kn::ValueTokenJob job;
      job.layer = static_cast<int32_t>(layer);
      job.src_pages = source;
      const int64_t slot = work.value_source_slot + t;
      job.src_slot = static_cast<int32_t>(work.value_ring > 0 ? slot % work.value_ring : slot);
      job.dst_pages = data;
      job.dst_token = static_cast<int32_t>(work.value_first_token + t);
      value_jobs.push_back(job);
    }
  }
  const int32_t key_at = AddStructs(table, key_jobs);
  const int32_t value_at = AddStructs(table, value_jobs);
  const at::Tensor tables = Upload(table, plan.shape.device);
  const int32_t* base = tables.data_ptr<int32_t>();
  Check(kn::QuantizeKeyGroups(layout, reinterpret_cast<const kn::KeyGroupJob*>(base + key_at),
                              static_cast<int32_t>(key_jobs.size()), base,
                              static_cast<int32_t>(plan.format.block_size), nullptr),
        "key quantization");
  Check(kn::QuantizeValueTokens(layout, reinterpret_cast<const kn::ValueTokenJob*>(base + value_at),
                                static_cast<int32_t>(value_jobs.size()), base, nullptr),
        "value quantization");
  return true;
}

#else  // no CUDA kernels in this build: every caller uses the per-sequence path

struct DecodeBatch::Group {};
bool DecodeBatch::Supports(const SequenceKvCache&) { return false; }
std::unique_ptr<DecodeBatch> DecodeBatch::Create(const std::vector<Entry>& entries, std::vector<bool>* accepted) {
  accepted->assign(entries.size(), false);
  return nullptr;
}
DecodeBatch::~DecodeBatch() = default;
void DecodeBatch::Attend(int64_t, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&) {
  TORCH_CHECK(false, "built without CUDA kernels");
}
void DecodeBatch::Finish() { TORCH_CHECK(false, "built without CUDA kernels"); }
bool QuantizeWithKernels(const DecodePlan&, const KernelQuantization&) { return false; }

#endif

}  // namespace squat::kv
