#include "kvcache/attention_backend.h"

#include <ATen/TensorIndexing.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "kernels/page_layout.h"
#include "kvcache/dense_attention.h"
#include "kvcache/page_geometry.h"
#include "kvcache/page_pool.h"
#include "kvcache/paged_stores.h"
#include "kvcache/quantized_blocks.h"
#include "kvcache/rope.h"
#include "kvcache/squat_state.h"
#include "kvcache/step_batch.h"

#ifdef SQUAT_HAVE_CUDA_KERNELS
#include "kernels/cuda_runtime.h"
#include "kernels/decode_attention.h"
#include "kernels/page_writes.h"
#endif

namespace squat::kv {
namespace {

at::Tensor LongTensor(const std::vector<int64_t>& values, at::Device device) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong)).to(device);
}

std::vector<int64_t> PagesOf(const int32_t* ids, const PageSpan& span) {
  return std::vector<int64_t>(ids + span.offset, ids + span.offset + span.count);
}

// What both backends share: ATen views of the pool, storing prefill rows' keys and values,
// and full-precision attention of prefill chunks over their slots.
class PagedBackend : public AttentionBackend {
 public:
  PagedBackend(const KvModelShape& shape, std::shared_ptr<const PagePool> pool)
      : shape_(shape), pool_(std::move(pool)),
        spp_(TokensPerPage(shape, KvFormat{KvMethod::kFp16}, pool_->page_bytes())),
        page_elements_(pool_->page_bytes() / ElementBytes(shape.compute_dtype)) {
    TORCH_CHECK(pool_->page_bytes() % (shape.head_dim * ElementBytes(shape.compute_dtype)) == 0,
                "attention backend: pages of ", pool_->page_bytes(), " bytes are not whole ", shape.head_dim,
                "-channel rows");
  }

  void Attend(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
              const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) override {
    TORCH_CHECK(layer >= 0 && layer < shape_.num_layers, "attention: layer ", layer, " out of range");
    CheckRows("q_rot", q_rot, batch.num_rows(), shape_.num_attention_heads);
    CheckRows("k_pre", k_pre, batch.num_rows(), shape_.num_kv_heads);
    CheckRows("k_rot", k_rot, batch.num_rows(), shape_.num_kv_heads);
    CheckRows("v", v, batch.num_rows(), shape_.num_kv_heads);
    CheckRows("out", out, batch.num_rows(), shape_.num_attention_heads);
    Store(layer, batch, k_pre, k_rot, v);
    if (batch.num_prefill_rows() > 0) AttendPrefill(layer, batch, q_rot, k_rot, v, out);
    AttendDecode(layer, batch, q_rot, k_pre, k_rot, v, out);
  }

 protected:
  // Writes the rows' keys (k_pre for pre-RoPE formats, else k_rot) and values into their
  // slots: at least every prefill row (decode kernels may append their own).
  virtual void Store(int64_t layer, const StepBatch& batch, const at::Tensor& k_pre, const at::Tensor& k_rot,
                     const at::Tensor& v) = 0;
  virtual void AttendDecode(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
                            const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) = 0;

  void CheckRows(const char* name, const at::Tensor& t, int64_t rows, int64_t heads) const {
    TORCH_CHECK(t.defined() && t.dim() == 3 && t.size(0) == rows && t.size(1) == heads &&
                    t.size(2) == shape_.head_dim && t.stride(2) == 1 && t.stride(1) == shape_.head_dim,
                "attention: ", name, " must be [", rows, ", ", heads, ", ", shape_.head_dim,
                "] with contiguous heads, got sizes ", t.sizes(), " strides ", t.strides());
    TORCH_CHECK(t.scalar_type() == shape_.compute_dtype && t.device() == pool_->device(), "attention: ", name,
                " must be ", shape_.compute_dtype, " on ", pool_->device(), ", got ", t.scalar_type(), " on ",
                t.device());
  }

  // Slots of (layer, part) of every page: [pages, H_kv, spp, d] (a view).
  at::Tensor Slots(int64_t layer, int64_t part) const {
    const int64_t h = shape_.num_kv_heads, d = shape_.head_dim;
    return pool_->Typed(shape_.compute_dtype)
        .as_strided({pool_->total_pages(), h, spp_, d}, {page_elements_, spp_ * d, d, 1},
                    kernels::SlotElement(h, spp_, d, layer, part, 0, 0));
  }
  // Slot rows of d channels: row (page * page_elements + SlotElement(...)) / d.
  at::Tensor SlotRows() const { return pool_->Typed(shape_.compute_dtype).view({-1, shape_.head_dim}); }
  int64_t SlotRow(int64_t page, int64_t layer, int64_t part, int64_t head, int64_t slot) const {
    const int64_t h = shape_.num_kv_heads, d = shape_.head_dim;
    return (page * page_elements_ + kernels::SlotElement(h, spp_, d, layer, part, head, slot)) / d;
  }
  int64_t LayerSlotRows() const { return 2 * shape_.num_kv_heads * spp_; }  // slot rows between layers

  // [H_kv, count, d]: slots [0, count) of the pages `ids` (int tensor on the pool's device).
  at::Tensor GatherSlots(const at::Tensor& ids, int64_t layer, int64_t part, int64_t count) const {
    const at::Tensor pages = Slots(layer, part).index_select(0, ids);  // [P, H, spp, d]
    return pages.permute({1, 0, 2, 3}).reshape({shape_.num_kv_heads, -1, shape_.head_dim}).narrow(1, 0, count);
  }

  // Full-precision causal attention of each prefill chunk over its prompt so far (slots [0,
  // start + T) of its slot pages, which already hold the chunk's rows).
  void AttendPrefill(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_rot,
                     const at::Tensor& v, const at::Tensor& out) const {
    const at::Tensor page_ids = batch.page_ids();
    for (const SequenceStep& s : batch.sequences()) {
      if (s.decode) continue;
      const int64_t rows = s.num_rows, total = s.start + rows;
      const at::Tensor q = q_rot.narrow(0, s.row_begin, rows).transpose(0, 1);  // [H_q, T, d]
      if (s.collects_queries) s.cache->AddPromptQueries(layer, q);
      at::Tensor keys, values;
      if (s.start == 0) {
        // The rows are the whole prompt so far: the model's own tensors (a pre-RoPE format's
        // stored keys rotated with the same table are these k_rot, bit for bit).
        keys = k_rot.narrow(0, s.row_begin, rows).transpose(0, 1);
        values = v.narrow(0, s.row_begin, rows).transpose(0, 1);
      } else {
        const at::Tensor ids = page_ids.narrow(0, s.slots.offset, s.slots.count);
        keys = GatherSlots(ids, layer, 0, total);
        values = GatherSlots(ids, layer, 1, total);
        if (batch.groups()[s.group].pre_rope) {
          const RopeAngles angles = RopeRange(shape_.rope_table, 0, total, shape_.compute_dtype);
          keys = ApplyRope(keys, angles.cos, angles.sin);
        }
      }
      out.narrow(0, s.row_begin, rows).copy_(CausalAttention(q, keys, values, s.start).transpose(0, 1));
    }
  }

  KvModelShape shape_;
  std::shared_ptr<const PagePool> pool_;
  int64_t spp_;            // full-precision slots per page
  int64_t page_elements_;  // compute-dtype elements per page
};

// ---------------------------------------------------------------------------------------------
// The reference: ATen on any device. Decode rows of one format are batched: their pages are
// gathered and dequantized together, padded to the longest context and masked.

class ReferenceBackend final : public PagedBackend {
 public:
  using PagedBackend::PagedBackend;
  const char* name() const override { return "reference"; }

  void BeginStep(const StepBatch& batch) override {
    const at::Device device = pool_->device();
    const int32_t* ids = batch.host_page_ids();
    const int64_t h = shape_.num_kv_heads;
    // Where each row's key and value go (slot rows of layer 0): prefill rows from the step's
    // triples, decode rows from their windows; split by which key tensor they store.
    std::vector<int64_t> rows[2], key_rows[2], value_rows[2];
    const int32_t* triples = batch.host_prefill_slots();
    for (int64_t i = 0; i < batch.num_prefill_rows(); ++i) {
      const int which = i < batch.num_prefill_pre_rope() ? 0 : 1;
      rows[which].push_back(triples[3 * i]);
      for (int64_t head = 0; head < h; ++head) {
        key_rows[which].push_back(SlotRow(triples[3 * i + 1], 0, 0, head, triples[3 * i + 2]));
        value_rows[which].push_back(SlotRow(triples[3 * i + 1], 0, 1, head, triples[3 * i + 2]));
      }
    }
    StepTables& tables = steps_[&batch];
    tables.decode.assign(batch.groups().size(), DecodeTables());
    for (size_t g = 0; g < batch.groups().size(); ++g) {
      const StepGroup& group = batch.groups()[g];
      if (group.decode.empty()) continue;
      const int which = group.pre_rope ? 0 : 1;
      for (int32_t index : group.decode) {
        const SequenceStep& s = batch.sequences()[index];
        rows[which].push_back(s.row_begin);
        const int64_t n = s.tokens - 1;  // the new token's position
        int64_t key_page, key_slot, value_page, value_slot;
        if (group.quantized) {
          key_page = ids[s.residual.offset + s.key_slot / spp_];
          key_slot = s.key_slot % spp_;
          const int64_t ring_slot = n % ResidualSlots(group.format);
          value_page = ids[s.residual.offset + ring_slot / spp_];
          value_slot = ring_slot % spp_;
        } else {
          key_page = value_page = ids[s.data.offset + n / spp_];
          key_slot = value_slot = n % spp_;
        }
        for (int64_t head = 0; head < h; ++head) {
          key_rows[which].push_back(SlotRow(key_page, 0, 0, head, key_slot));
          value_rows[which].push_back(SlotRow(value_page, 0, 1, head, value_slot));
        }
      }
      tables.decode[g] = DecodeTablesOf(batch, group, device);
    }
    for (int which = 0; which < 2; ++which) {
      tables.store[which].rows = LongTensor(rows[which], device);
      tables.store[which].key_rows = LongTensor(key_rows[which], device);
      tables.store[which].value_rows = LongTensor(value_rows[which], device);
    }
  }

  void RunTasks(const StepBatch& batch) override {
    steps_.erase(&batch);  // the step's attention is done
    const int32_t* ids = batch.host_page_ids();
    // Keys: per sequence (each one's compensation matrices are its own).
    for (const SequenceStep& s : batch.sequences()) {
      const StepGroup& group = batch.groups()[s.group];
      const int64_t tpp = group.layout.tokens_per_page;
      if (s.has_key_work) {
        const KeyWork& w = s.key_work;
        const Fp16SlotStore src(*pool_, PagesOf(ids, w.src), shape_, spp_);
        const QuantizedTokenStore dst(*pool_, PagesOf(ids, w.dst), shape_, group.format, tpp);
        const PagedArray state = w.state.count > 0 ? PagedArray(*pool_, PagesOf(ids, w.state), at::kFloat) : PagedArray();
        for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
          const at::Tensor keys = src.Read(layer, KvPart::kKeys, w.src_first_slot, w.num_groups * group.format.group_size);
          const auto compensation = w.state.count > 0 ? LoadCompensation(state, layer, shape_.num_kv_heads, shape_.head_dim,
                                                                         group.format.block_size)
                                                      : std::vector<std::vector<at::Tensor>>();
          dst.WriteKeys(layer, w.dst_first_token, QuantizeKeyBlock(keys, group.format, compensation));
        }
      }
    }
    // Values are quantized per token: every token of every sequence of a format at once.
    for (size_t g = 0; g < batch.groups().size(); ++g) {
      const StepGroup& group = batch.groups()[g];
      const int64_t tpp = group.layout.tokens_per_page;
      std::vector<int64_t> src_page, src_slot, dst_page, dst_token;
      for (const SequenceStep& s : batch.sequences()) {
        if (s.group != static_cast<int32_t>(g) || !s.has_value_work) continue;
        const ValueWork& w = s.value_work;
        for (int64_t t = 0; t < w.num_tokens; ++t) {
          const int64_t slot = w.ring > 0 ? (w.src_first_slot + t) % w.ring : w.src_first_slot + t;
          const int64_t token = w.dst_first_token + t;
          src_page.push_back(ids[w.src.offset + slot / spp_]);
          src_slot.push_back(slot % spp_);
          dst_page.push_back(ids[w.dst.offset + token / tpp]);
          dst_token.push_back(token % tpp);
        }
      }
      if (!src_page.empty()) QuantizeValues(group, src_page, src_slot, dst_page, dst_token);
    }
  }

 protected:
  // Prefill and decode rows alike, with the slot rows planned in BeginStep.
  void Store(int64_t layer, const StepBatch& batch, const at::Tensor& k_pre, const at::Tensor& k_rot,
             const at::Tensor& v) override {
    const at::Tensor slot_rows = SlotRows();
    const int64_t d = shape_.head_dim, offset = layer * LayerSlotRows();
    const StepTables& tables = TablesOf(batch);
    for (int which = 0; which < 2; ++which) {
      const StoreTables& t = tables.store[which];
      if (t.rows.numel() == 0) continue;
      const at::Tensor& keys = which == 0 ? k_pre : k_rot;
      slot_rows.index_copy_(0, t.key_rows + offset, keys.index_select(0, t.rows).reshape({-1, d}));
      slot_rows.index_copy_(0, t.value_rows + offset, v.index_select(0, t.rows).reshape({-1, d}));
    }
  }

  void AttendDecode(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&, const at::Tensor& out) override {
    for (size_t g = 0; g < batch.groups().size(); ++g) {
      const StepGroup& group = batch.groups()[g];
      if (!group.decode.empty()) AttendGroup(layer, group, TablesOf(batch).decode[g], q_rot, out);
    }
  }

 private:
  // Quantizes the values of slots (src_page, src_slot) into tokens (dst_page, dst_token), every
  // layer (spec 5.2; per token, so all of them in one call).
  void QuantizeValues(const StepGroup& group, const std::vector<int64_t>& src_page, const std::vector<int64_t>& src_slot,
                      const std::vector<int64_t>& dst_page, const std::vector<int64_t>& dst_token) const {
    using at::indexing::Slice;
    const at::Device device = pool_->device();
    const at::Tensor from_page = LongTensor(src_page, device), from_slot = LongTensor(src_slot, device);
    const at::Tensor to_page = LongTensor(dst_page, device), to_token = LongTensor(dst_token, device);
    const int64_t h = shape_.num_kv_heads, d = shape_.head_dim, tpp = group.layout.tokens_per_page;
    const int64_t g = group.format.group_size, words = d / (32 / group.format.v_bits);
    const kernels::QuantOffsets o = kernels::QuantLayerOffsets(group.layout);
    for (int64_t layer = 0; layer < shape_.num_layers; ++layer) {
      const at::Tensor values = Slots(layer, 1).index({from_page, Slice(), from_slot});  // [n, H, d]
      const PackedValues packed = QuantizeValueTokens(values.transpose(0, 1), group.format);  // [H, n, ...]
      auto put = [&](int64_t offset, at::ScalarType dtype, int64_t last, const at::Tensor& x) {
        QuantView(group, layer, offset, dtype, {h, tpp, last}).index_put_({to_page, Slice(), to_token}, x.transpose(0, 1));
      };
      put(o.value_words, at::kInt, words, packed.words);
      put(o.value_scale, at::kHalf, d / g, packed.scale);
      put(o.value_min, at::kHalf, d / g, packed.min);
    }
  }

  // Index tensors of one format's decode rows for the step (on the pool's device). Each
  // sequence's tokens are read exactly (no page padding): fp16 slots straight into the padded
  // [B, N_max] layout; quantized formats into token lists (the quantized keys, then values, of
  // every sequence, then each sequence's R + 1 residual slots), from which every sequence's
  // N_max positions are picked.
  struct DecodeTables {
    at::Tensor rows;                   // [B] rows of the batch
    at::Tensor slot_page, slot;        // fp16: [B * N_max]; quantized: the residual slots [B * (R + 1)]
    at::Tensor key_page, key_column, key_group;  // quantized keys by word column [K_w]
    at::Tensor key_positions;                     // pre-RoPE: the position of each key list entry
    at::Tensor value_page, value_token;          // quantized values by token [K_v]
    at::Tensor key_index, value_index;  // quantized: [B * N_max] positions in the token lists
    at::Tensor pad;                     // [B, N_max] true past the sequence's N
    int64_t max_tokens = 0;             // N_max
  };

  struct StoreTables {
    at::Tensor rows, key_rows, value_rows;  // rows of the batch; their slot rows (layer 0) per head
  };

  DecodeTables DecodeTablesOf(const StepBatch& batch, const StepGroup& group, at::Device device) const {
    const int32_t* ids = batch.host_page_ids();
    const int64_t b = static_cast<int64_t>(group.decode.size());
    DecodeTables t;
    t.max_tokens = group.max_decode_tokens;
    const int64_t n_max = t.max_tokens;
    std::vector<int64_t> rows, slot_page, slot, key_page, key_column, key_group, value_page, value_token, key_index,
        value_index, pad, key_positions;
    if (!group.quantized) {
      for (int32_t index : group.decode) {
        const SequenceStep& s = batch.sequences()[index];
        rows.push_back(s.row_begin);
        for (int64_t n = 0; n < n_max; ++n) {
          const int64_t token = n < s.tokens ? n : 0;  // padding reads the written token 0, masked below
          slot_page.push_back(ids[s.data.offset + token / spp_]);
          slot.push_back(token % spp_);
          pad.push_back(n < s.tokens ? 0 : 1);
        }
      }
    } else {
      const int64_t tpp = group.layout.tokens_per_page, per_word = 32 / group.format.k_bits;
      const int64_t g = group.format.group_size, ring = ResidualSlots(group.format);
      int64_t quantized_keys = 0, quantized_values = 0;
      for (int32_t index : group.decode) {
        const SequenceStep& s = batch.sequences()[index];
        quantized_keys += s.quantized_keys;
        quantized_values += s.quantized_values;
      }
      int64_t key_at = 0, value_at = 0, seq = 0;
      std::vector<int64_t> residual_positions;
      for (int32_t index : group.decode) {
        const SequenceStep& s = batch.sequences()[index];
        rows.push_back(s.row_begin);
        for (int64_t n = 0; n < s.quantized_keys; n += per_word) {  // N_q is a multiple of R
          key_page.push_back(ids[s.data.offset + n / tpp]);
          key_column.push_back(n % tpp / per_word);
          key_group.push_back(n % tpp / g);
        }
        for (int64_t n = 0; n < s.quantized_values; ++n) {
          value_page.push_back(ids[s.data.offset + n / tpp]);
          value_token.push_back(n % tpp);
        }
        for (int64_t r = 0; r < ring; ++r) {
          slot_page.push_back(ids[s.residual.offset + r / spp_]);
          slot.push_back(r % spp_);
          // Residual key slot r holds position N_q + r (slots past |Kr| are never read).
          residual_positions.push_back(std::min(s.quantized_keys + r, s.tokens - 1));
        }
        if (group.pre_rope) {
          for (int64_t n = 0; n < s.quantized_keys; ++n) key_positions.push_back(n);
        }
        const int64_t residual_at = seq * ring;
        for (int64_t n = 0; n < n_max; ++n) {
          const bool valid = n < s.tokens;
          pad.push_back(valid ? 0 : 1);
          // Padding reads the first sequence's residual slot 0, which holds a written key and
          // value whenever a step decodes (its scores are masked, so it weighs nothing).
          key_index.push_back(!valid ? quantized_keys
                              : n < s.quantized_keys ? key_at + n
                                                     : quantized_keys + residual_at + (n - s.quantized_keys));
          value_index.push_back(!valid ? quantized_values
                                : n < s.quantized_values ? value_at + n
                                                         : quantized_values + residual_at + n % ring);
        }
        key_at += s.quantized_keys;
        value_at += s.quantized_values;
        ++seq;
      }
      t.key_page = LongTensor(key_page, device);
      t.key_column = LongTensor(key_column, device);
      t.key_group = LongTensor(key_group, device);
      t.value_page = LongTensor(value_page, device);
      t.value_token = LongTensor(value_token, device);
      t.key_index = LongTensor(key_index, device);
      t.value_index = LongTensor(value_index, device);
      if (group.pre_rope) {
        key_positions.insert(key_positions.end(), residual_positions.begin(), residual_positions.end());
        t.key_positions = LongTensor(key_positions, device);
      }
    }
    t.rows = LongTensor(rows, device);
    t.slot_page = LongTensor(slot_page, device);
    t.slot = LongTensor(slot, device);
    t.pad = LongTensor(pad, device).view({b, n_max}).to(at::kBool);
    return t;
  }

  // [n, H, d]: slot (page[i], slot[i]) of (layer, part) for each i.
  at::Tensor SlotTokens(const at::Tensor& pages, const at::Tensor& slots, int64_t layer, int64_t part) const {
    using at::indexing::Slice;
    return Slots(layer, part).index({pages, Slice(), slots});
  }

  // Quantized blocks of `layer` of every page, as [pages, ...inner] strided views of the pool.
  at::Tensor QuantView(const StepGroup& group, int64_t layer, int64_t offset, at::ScalarType dtype,
                       std::vector<int64_t> inner) const {
    const int64_t element = ElementBytes(dtype);
    const kernels::QuantOffsets o = kernels::QuantLayerOffsets(group.layout);
    std::vector<int64_t> sizes = {pool_->total_pages()}, strides(inner.size() + 1);
    sizes.insert(sizes.end(), inner.begin(), inner.end());
    strides[0] = pool_->page_bytes() / element;
    int64_t stride = 1;
    for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 1; --i) {
      strides[i] = stride;
      stride *= sizes[i];
    }
    return pool_->Typed(dtype).as_strided(sizes, strides, (layer * o.layer_bytes + offset) / element);
  }

  // Codes of packed words [..., n] -> float32 [..., n, 32 / bits], LSB first (int32 shifts:
  // the sign bits an arithmetic shift brings in are masked off).
  static at::Tensor Unpack(const at::Tensor& words, int bits) {
    const at::Tensor shifts = at::arange(0, 32, bits, words.options());
    return words.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and((1 << bits) - 1).to(at::kFloat);
  }

  // Token lists [H, sum N_q (or N_v) + B (R + 1), d] in the compute dtype: every decode
  // sequence's quantized keys (or values) in order, dequantized as squat_math does (code *
  // scale + min in float32), then every sequence's R + 1 residual slots. Heads first, so that
  // the padded per-sequence layout gathered from them is [H, B, N_max, d], contiguous for the
  // batched products.
  at::Tensor KeyList(const StepGroup& group, int64_t layer, const DecodeTables& t) const {
    using at::indexing::Slice;
    const int64_t h = shape_.num_kv_heads, d = shape_.head_dim, columns = t.key_page.size(0);
    const int64_t tpp = group.layout.tokens_per_page, g = group.format.group_size;
    const int64_t per_word = 32 / group.format.k_bits, quantized = columns * per_word;
    const kernels::QuantOffsets o = kernels::QuantLayerOffsets(group.layout);
    at::Tensor list =
        at::empty({h, quantized + t.slot.size(0), d}, at::TensorOptions().dtype(at::kFloat).device(pool_->device()));
    if (columns > 0) {
      auto pick = [&](int64_t offset, at::ScalarType dtype, int64_t last, const at::Tensor& column) {  // [K_w, H, d]
        return QuantView(group, layer, offset, dtype, {h, d, last}).index({t.key_page, Slice(), Slice(), column});
      };
      // Word column k holds tokens k * per_word + j: write [K_w, H, d, j] into the list.
      at::Tensor dst = list.narrow(1, 0, quantized).view({h, columns, per_word, d}).permute({1, 0, 3, 2});
      at::mul_out(dst, Unpack(pick(o.key_words, at::kInt, tpp / per_word, t.key_column), group.format.k_bits),
                  pick(o.key_scale, at::kHalf, tpp / g, t.key_group).to(at::kFloat).unsqueeze(-1));
      dst.add_(pick(o.key_min, at::kHalf, tpp / g, t.key_group).to(at::kFloat).unsqueeze(-1));
    }
    list = list.to(shape_.compute_dtype);
    list.narrow(1, quantized, t.slot.size(0)).copy_(SlotTokens(t.slot_page, t.slot, layer, 0).transpose(0, 1));
    return list;
  }

  at::Tensor ValueList(const StepGroup& group, int64_t layer, const DecodeTables& t) const {
    using at::indexing::Slice;
    const int64_t h = shape_.num_kv_heads, d = shape_.head_dim, quantized = t.value_page.size(0);
    const int64_t tpp = group.layout.tokens_per_page, g = group.format.group_size;
    const kernels::QuantOffsets o = kernels::QuantLayerOffsets(group.layout);
    at::Tensor list =
        at::empty({h, quantized + t.slot.size(0), d}, at::TensorOptions().dtype(at::kFloat).device(pool_->device()));
    if (quantized > 0) {
      auto pick = [&](int64_t offset, at::ScalarType dtype, int64_t last) {  // [K_v, H, last]
        return QuantView(group, layer, offset, dtype, {h, tpp, last}).index({t.value_page, Slice(), t.value_token});
      };
      at::Tensor dst = list.narrow(1, 0, quantized).view({h, quantized, d / g, g}).transpose(0, 1);
      at::mul_out(dst, Unpack(pick(o.value_words, at::kInt, d / (32 / group.format.v_bits)), group.format.v_bits)
                           .view({quantized, h, d / g, g}),
                  pick(o.value_scale, at::kHalf, d / g).to(at::kFloat).unsqueeze(-1));
      dst.add_(pick(o.value_min, at::kHalf, d / g).to(at::kFloat).unsqueeze(-1));
    }
    list = list.to(shape_.compute_dtype);
    list.narrow(1, quantized, t.slot.size(0)).copy_(SlotTokens(t.slot_page, t.slot, layer, 1).transpose(0, 1));
    return list;
  }

  void AttendGroup(int64_t layer, const StepGroup& group, const DecodeTables& t, const at::Tensor& q_rot,
                   const at::Tensor& out) const {
    const int64_t b = t.rows.size(0), h = shape_.num_kv_heads, d = shape_.head_dim;
    const int64_t n_rep = shape_.num_attention_heads / h, n = t.max_tokens;
    const at::ScalarType dtype = shape_.compute_dtype;
    at::Tensor keys, values;  // [H, B, N_max, d]
    if (!group.quantized) {
      keys = SlotTokens(t.slot_page, t.slot, layer, 0).transpose(0, 1);
      values = SlotTokens(t.slot_page, t.slot, layer, 1).transpose(0, 1);
    } else {
      at::Tensor key_list = KeyList(group, layer, t);
      if (group.pre_rope) {  // each key once, at its position, before the padded layout
        const RopeAngles angles = RopeRows(shape_.rope_table, t.key_positions, dtype);
        key_list = ApplyRope(key_list, angles.cos, angles.sin);
      }
      keys = key_list.index_select(1, t.key_index);
      values = ValueList(group, layer, t).index_select(1, t.value_index);
    }
    keys = keys.reshape({h, b, n, d});
    values = values.reshape({h, b, n, d});
    const at::Tensor q = q_rot.index_select(0, t.rows).view({b, h, n_rep, d}).transpose(0, 1);
    at::Tensor scores = at::matmul(q, keys.transpose(2, 3)).mul_(1.0 / std::sqrt(static_cast<double>(d)));
    scores.masked_fill_(t.pad.view({1, b, 1, n}), -std::numeric_limits<double>::infinity());
    const at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(dtype);
    out.index_copy_(0, t.rows, at::matmul(probs, values).transpose(0, 1).reshape({b, h * n_rep, d}));
  }

  // What BeginStep prepared, per batch in flight (squat-eval's tee runs two at once).
  struct StepTables {
    StoreTables store[2];              // rows that store k_pre (pre-RoPE formats), and k_rot
    std::vector<DecodeTables> decode;  // per group of the step
  };
  const StepTables& TablesOf(const StepBatch& batch) const {
    auto it = steps_.find(&batch);
    TORCH_CHECK(it != steps_.end(), "attention backend: the step was not begun");
    return it->second;
  }
  std::map<const StepBatch*, StepTables> steps_;
};

// ---------------------------------------------------------------------------------------------
// The CUDA kernels (kernels/decode_attention.h, kernels/page_writes.h): one launch per layer for each format's decode
// rows, one for every prefill row's store, one per kind of quantization work.

#ifdef SQUAT_HAVE_CUDA_KERNELS
namespace kn = squat::kernels;

void Check(int error, const char* what) {
  TORCH_CHECK(error == 0, "attention backend: ", what, " failed: ", kn::ErrorString(error));
}

class CudaBackend final : public PagedBackend {
 public:
  CudaBackend(const KvModelShape& shape, std::shared_ptr<const PagePool> pool)
      : PagedBackend(shape, std::move(pool)), base_layout_(PoolLayoutFor(shape_, *pool_, KvFormat{KvMethod::kFp16})) {}
  const char* name() const override { return "cuda"; }

  static bool Supports(const KvModelShape& shape, const PagePool& pool) {
    if (!pool.device().is_cuda() || kn::DeviceCount() == 0) return false;
    if (shape.compute_dtype != at::kFloat && shape.compute_dtype != at::kHalf && shape.compute_dtype != at::kBFloat16) {
      return false;
    }
    return kn::LayoutSupported(PoolLayoutFor(shape, pool, KvFormat{KvMethod::kFp16}), /*quantized=*/false);
  }

  void BeginStep(const StepBatch& batch) override {
    Splits& plan = steps_[&batch];
    plan.splits.assign(batch.groups().size(), kn::DecodeSplit());
    plan.workspace_at.assign(batch.groups().size(), 0);
    int64_t floats = 0;
    for (size_t g = 0; g < batch.groups().size(); ++g) {
      const StepGroup& group = batch.groups()[g];
      if (group.decode.empty()) continue;
      TORCH_CHECK(kn::LayoutSupported(group.layout, group.quantized), "attention backend: the CUDA kernels do not ",
                  "support the layout of KV format ", KvMethodName(group.format.method));
      const int32_t b = static_cast<int32_t>(group.decode.size());
      plan.splits[g] = kn::ChooseDecodeSplit(b, group.layout.kv_heads, static_cast<int32_t>(group.max_decode_tokens));
      if (plan.splits[g].num_splits > 1) {
        plan.workspace_at[g] = floats;
        floats += kn::DecodeWorkspaceFloats(b, group.layout.q_heads, group.layout.head_dim, plan.splits[g].num_splits);
      }
    }
    // Split-KV partials: one buffer, grown when a step needs more (a few MB at most: splits are
    // only chosen while few sequences leave SMs idle), so steady steps allocate nothing.
    if (floats > 0 && (!workspace_.defined() || workspace_.numel() < floats)) {
      const int64_t grown = workspace_.defined() ? std::max(floats, 2 * workspace_.numel()) : floats;
      workspace_ = at::empty({grown}, at::TensorOptions().dtype(at::kFloat).device(pool_->device()));
    }
  }

  void RunTasks(const StepBatch& batch) override {
    steps_.erase(&batch);
    for (const StepGroup& group : batch.groups()) {
      if (group.num_key_tasks > 0) {
        Check(kn::QuantizeKeyTasks(group.layout, reinterpret_cast<const kn::KeyTask*>(batch.device_words(group.key_tasks_at)),
                                   group.num_key_tasks, group.key_blocks, batch.device_page_ids(),
                                   static_cast<int32_t>(group.format.block_size), nullptr),
              "key quantization");
      }
      if (group.num_value_tasks > 0) {
        Check(kn::QuantizeValueTasks(group.layout,
                                     reinterpret_cast<const kn::ValueTask*>(batch.device_words(group.value_tasks_at)),
                                     group.num_value_tasks, group.value_blocks, batch.device_page_ids(),
                                     nullptr),
              "value quantization");
      }
    }
  }

 protected:
  void Store(int64_t layer, const StepBatch& batch, const at::Tensor& k_pre, const at::Tensor& k_rot,
             const at::Tensor& v) override {
    const int32_t* slots = batch.device_prefill_slots();
    const int64_t pre = batch.num_prefill_pre_rope(), post = batch.num_prefill_rows() - pre;
    const int32_t l = static_cast<int32_t>(layer);
    Check(kn::StoreSlotRows(base_layout_, l, slots, static_cast<int32_t>(pre), k_pre.data_ptr(), k_pre.stride(0),
                            v.data_ptr(), v.stride(0), nullptr),
          "prefill store");
    Check(kn::StoreSlotRows(base_layout_, l, slots + 3 * pre, static_cast<int32_t>(post), k_rot.data_ptr(),
                            k_rot.stride(0), v.data_ptr(), v.stride(0), nullptr),
          "prefill store");
  }

  void AttendDecode(int64_t layer, const StepBatch& batch, const at::Tensor& q_rot, const at::Tensor& k_pre,
                    const at::Tensor& k_rot, const at::Tensor& v, const at::Tensor& out) override {
    auto it = steps_.find(&batch);
    TORCH_CHECK(it != steps_.end(), "attention backend: the step was not begun");
    const Splits& plan = it->second;
    for (size_t g = 0; g < batch.groups().size(); ++g) {
      const StepGroup& group = batch.groups()[g];
      if (group.decode.empty()) continue;
      const at::Tensor& k_new = group.pre_rope ? k_pre : k_rot;
      kn::DecodeArgs args;
      args.layout = group.layout;
      args.layer = static_cast<int32_t>(layer);
      args.quantized = group.quantized;
      args.pre_rope = group.pre_rope;
      args.sequences = reinterpret_cast<const kn::DecodeSequence*>(batch.device_words(group.decode_at));
      args.page_ids = batch.device_page_ids();
      args.num_sequences = static_cast<int32_t>(group.decode.size());
      args.q = q_rot.data_ptr();
      args.q_row_stride = q_rot.stride(0);
      args.k_new = k_new.data_ptr();
      args.k_row_stride = k_new.stride(0);
      args.v_new = v.data_ptr();
      args.v_row_stride = v.stride(0);
      if (group.pre_rope) {
        args.rope_table = shape_.rope_table.data_ptr<float>();
        args.rope_positions = static_cast<int32_t>(shape_.rope_table.size(0));
      }
      args.out = out.data_ptr();
      args.out_row_stride = out.stride(0);
      if (plan.splits[g].num_splits > 1) {
        args.num_splits = plan.splits[g].num_splits;
        args.split_tokens = plan.splits[g].split_tokens;
        args.workspace = workspace_.data_ptr<float>() + plan.workspace_at[g];
      }
      Check(kn::PagedDecodeAttention(args, nullptr), "decode attention");
    }
  }

 private:
  kn::PoolLayout base_layout_;  // the full-precision slot layout (prefill stores)
  // Split-KV of each group, per batch in flight (squat-eval's tee runs two at once).
  struct Splits {
    std::vector<kn::DecodeSplit> splits;
    std::vector<int64_t> workspace_at;
  };
  std::map<const StepBatch*, Splits> steps_;
  at::Tensor workspace_;
};
#endif  // SQUAT_HAVE_CUDA_KERNELS

}  // namespace

std::unique_ptr<AttentionBackend> AttentionBackend::Create(const KvModelShape& shape,
                                                           std::shared_ptr<const PagePool> pool) {
#ifdef SQUAT_HAVE_CUDA_KERNELS
  if (CudaBackend::Supports(shape, *pool)) return std::make_unique<CudaBackend>(shape, std::move(pool));
#endif
  return CreateReference(shape, std::move(pool));
}

std::unique_ptr<AttentionBackend> AttentionBackend::CreateReference(const KvModelShape& shape,
                                                                    std::shared_ptr<const PagePool> pool) {
  return std::make_unique<ReferenceBackend>(shape, std::move(pool));
}

}  // namespace squat::kv
