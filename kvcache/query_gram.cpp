#include "kvcache/query_gram.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "kvcache/page_geometry.h"

namespace squat::kv {

QueryGramAccumulator::QueryGramAccumulator(PageLease gram_pages, PageLease pending_pages,
                                           const KvModelShape& shape)
    : gram_lease_(std::move(gram_pages)), pending_lease_(std::move(pending_pages)),
      gram_(gram_lease_, at::kDouble), pending_(pending_lease_, shape.compute_dtype),
      kv_heads_(shape.num_kv_heads), heads_(shape.num_attention_heads), head_dim_(shape.head_dim),
      tokens_(shape.num_layers, 0) {
  TORCH_CHECK(gram_.capacity() >= shape.num_layers * kv_heads_ * head_dim_ * head_dim_ &&
                  pending_.capacity() >= shape.num_layers * kGramBlockTokens * heads_ * head_dim_,
              "query Gram: leases of ", gram_lease_.size(), " and ", pending_lease_.size(), " pages are too small");
}

int64_t QueryGramAccumulator::GramOffset(int64_t layer) const { return layer * kv_heads_ * head_dim_ * head_dim_; }

int64_t QueryGramAccumulator::PendingOffset(int64_t layer, int64_t token) const {
  return (layer * kGramBlockTokens + token) * heads_ * head_dim_;
}

at::Tensor QueryGramAccumulator::BlockGram(const at::Tensor& queries) const {
  const int64_t rows = queries.size(0) / kv_heads_ * queries.size(1);
  // Rows of KV head h: query heads h * n_rep .. (h + 1) * n_rep - 1, every position of the block.
  const at::Tensor grouped = queries.to(at::kDouble).contiguous().view({kv_heads_, rows, head_dim_});
  return at::bmm(grouped.transpose(1, 2), grouped);
}

at::Tensor QueryGramAccumulator::ReadPending(int64_t layer, int64_t count) const {
  return pending_.Read(PendingOffset(layer, 0), count * heads_ * head_dim_)
      .view({count, heads_, head_dim_})
      .transpose(0, 1);
}

void QueryGramAccumulator::Add(int64_t layer, const at::Tensor& q_rot) {
  TORCH_CHECK(active(), "query Gram: already released");
  const int64_t count = q_rot.size(1), block = kGramBlockTokens;
  int64_t pending = tokens_[layer] % block;
  const bool had_blocks = tokens_[layer] >= block;
  at::Tensor gram;  // the running sum, read from the pages when the first block completes here
  auto add_block = [&](const at::Tensor& queries) {
    const at::Tensor block_gram = BlockGram(queries);
    if (gram.defined()) {
      gram.add_(block_gram);
    } else if (had_blocks) {
      gram = gram_.Read(GramOffset(layer), kv_heads_ * head_dim_ * head_dim_)
                 .view({kv_heads_, head_dim_, head_dim_})
                 .add(block_gram);
    } else {
      gram = block_gram;  // the first block: the sum is that block's Gram
    }
  };
  auto stash = [&](int64_t from, int64_t n) {  // positions [from, from + n) of this chunk wait
    pending_.Write(PendingOffset(layer, pending), q_rot.narrow(1, from, n).transpose(0, 1).contiguous());
    pending += n;
  };

  int64_t done = 0;
  if (pending > 0) {  // complete the unfinished block first
    const int64_t n = std::min(block - pending, count);
    stash(0, n);
    done = n;
    if (pending == block) {
      add_block(ReadPending(layer, block));
      pending = 0;
    }
  }
  for (; done + block <= count; done += block) add_block(q_rot.narrow(1, done, block));
  if (done < count) stash(done, count - done);
  if (gram.defined()) gram_.Write(GramOffset(layer), gram);
  tokens_[layer] += count;
}

at::Tensor QueryGramAccumulator::Total(int64_t layer) const {
  TORCH_CHECK(active(), "query Gram: already released");
  TORCH_CHECK(tokens_[layer] > 0, "query Gram of layer ", layer, " has no rows");
  const int64_t pending = tokens_[layer] % kGramBlockTokens;
  if (tokens_[layer] < kGramBlockTokens) return BlockGram(ReadPending(layer, pending));
  at::Tensor gram =
      gram_.Read(GramOffset(layer), kv_heads_ * head_dim_ * head_dim_).view({kv_heads_, head_dim_, head_dim_}).clone();
  if (pending > 0) gram.add_(BlockGram(ReadPending(layer, pending)));
  return gram;
}

void QueryGramAccumulator::Release() {
  gram_lease_.Reset();
  pending_lease_.Reset();
  gram_ = PagedArray();
  pending_ = PagedArray();
}

}  // namespace squat::kv
