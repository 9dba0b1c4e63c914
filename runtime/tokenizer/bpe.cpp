#include "runtime/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <queue>
#include <utility>

#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

constexpr std::string_view kWhere = "model BPE";
// Holes allowed in the vocab's ids beyond twice its size (added tokens may fill them).
constexpr int64_t kMaxVocabIdSlack = 1024;

// Splits one merges entry ("a b" or ["a", "b"]) into its two tokens.
absl::StatusOr<std::pair<std::string, std::string>> MergeParts(const Json& entry, size_t rank) {
  if (entry.is_string()) {
    const std::string& line = entry.get_ref<const std::string&>();
    size_t space = line.find(' ');
    if (space != std::string::npos && line.find(' ', space + 1) == std::string::npos) {
      return std::make_pair(line.substr(0, space), line.substr(space + 1));
    }
  } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
             entry[1].is_string()) {
    return std::make_pair(entry[0].get<std::string>(), entry[1].get<std::string>());
  }
  return SpecError(kWhere, absl::StrCat("merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]"));
}

// One symbol of a word being merged: a doubly linked list over a vector.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int32_t pos;  // the left symbol of the pair
  int32_t new_id;
  // Lowest rank first, then leftmost: the order HF's Word::merge_all pops merges in.
  bool operator>(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : pos > other.pos;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model) {
  auto bpe = std::make_unique<BpeModel>();

  const Json* vocab = OptionalField(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return SpecError(kWhere, "'vocab' must be an object of token -> id");
  }
  bpe->vocab_.reserve(vocab->size());
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return SpecError(kWhere, "vocab id of '" + token + "' must be a non-negative integer");
    }
    int32_t value = id.get<int32_t>();
    bpe->vocab_[token] = value;
    max_id = std::max(max_id, value);
  }
  // The id table below is dense: ids far beyond the number of entries mean a corrupt file, and
  // would make it huge (found by fuzzing: one id of 1.6e9 asked for 51 GB).
  const int64_t entries = static_cast<int64_t>(bpe->vocab_.size());
  if (int64_t{max_id} + 1 > 2 * entries + kMaxVocabIdSlack) {
    return SpecError(kWhere, "vocab ids are too sparse: the largest is " + std::to_string(max_id) + " for " +
                                 std::to_string(entries) + " entries");
  }
  bpe->id_to_token_.assign(max_id + 1, std::string());
  bpe->id_present_.assign(max_id + 1, false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[id] = token;
    bpe->id_present_[id] = true;
  }

  const Json* merges = OptionalField(model, "merges");
  if (merges != nullptr && !merges->is_array()) {
    return SpecError(kWhere, "'merges' must be a list");
  }
  if (merges != nullptr) {
    bpe->merges_.reserve(merges->size());
    for (size_t rank = 0; rank < merges->size(); ++rank) {
      auto parts = MergeParts((*merges)[rank], rank);
      if (!parts.ok()) return parts.status();
      auto left = bpe->TokenToId(parts->first);
      auto right = bpe->TokenToId(parts->second);
      auto merged = bpe->TokenToId(parts->first + parts->second);
      if (!left || !right || !merged) {
        return SpecError(kWhere, absl::StrCat("merges[", rank, "] ('", parts->first, "', '",
                                              parts->second, "') uses a token not in the vocab"));
      }
      bpe->merges_[PairKey(*left, *right)] = {static_cast<int32_t>(rank), *merged};
    }
  }

  if (const Json* dropout = OptionalField(model, "dropout");
      dropout != nullptr && (!dropout->is_number() || dropout->get<double>() > 0.0)) {
    return SpecError(kWhere, "BPE dropout is not supported (it is random at inference)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* affix = OptionalField(model, key);
    if (affix != nullptr && !(affix->is_string() && affix->get<std::string>().empty())) {
      return SpecError(kWhere, absl::StrCat("'", key, "' is not supported"));
    }
  }
  if (const Json* unk = OptionalField(model, "unk_token")) {
    if (!unk->is_string()) return SpecError(kWhere, "'unk_token' must be a string or null");
    bpe->unk_id_ = bpe->TokenToId(unk->get<std::string>());
    if (!bpe->unk_id_) {
      return SpecError(kWhere, "unk_token '" + unk->get<std::string>() + "' is not in the vocab");
    }
  }
  for (auto [key, flag] : {std::pair{"fuse_unk", &bpe->fuse_unk_},
                           std::pair{"byte_fallback", &bpe->byte_fallback_},
                           std::pair{"ignore_merges", &bpe->ignore_merges_}}) {
    auto value = BoolField(model, key, false, kWhere);
    if (!value.ok()) return value.status();
    *flag = *value;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    bpe->byte_fallback_ids_[b] = bpe->TokenToId(name).value_or(-1);
  }
  return bpe;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id > max_id() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::MergeTarget* BpeModel::FindMerge(int32_t left, int32_t right) const {
  auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::InitialSymbols(std::string_view piece, std::vector<int32_t>& ids) const {
  std::optional<int32_t> pending_unk;  // an unknown run not yet emitted (fuse_unk joins runs)
  auto flush_unk = [&] {
    if (pending_unk) ids.push_back(*pending_unk);
    pending_unk.reset();
  };
  std::string character;
  for (size_t pos = 0; pos < piece.size();) {
    size_t length = DecodeUtf8(piece, pos).length;
    character.assign(piece.substr(pos, length));
    pos += length;

    if (auto it = vocab_.find(character); it != vocab_.end()) {
      flush_unk();
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes_known = true;
      for (char c : character) all_bytes_known &= byte_fallback_ids_[uint8_t(c)] >= 0;
      if (all_bytes_known) {
        flush_unk();
        for (char c : character) ids.push_back(byte_fallback_ids_[uint8_t(c)]);
        continue;
      }
    }
    // HF drops the character when there is no unk token.
    if (unk_id_) {
      if (!(pending_unk && fuse_unk_)) flush_unk();
      pending_unk = unk_id_;
    }
  }
  flush_unk();
}

void BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    // Llama-3: a pre-token that is itself a vocab entry is emitted whole.
    if (auto id = TokenToId(piece)) {
      out.push_back(*id);
      return;
    }
  }
  std::vector<int32_t> ids;
  InitialSymbols(piece, ids);
  if (ids.size() < 2) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }

  const int32_t n = static_cast<int32_t>(ids.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) symbols[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1, true};

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const MergeTarget* m = FindMerge(ids[i], ids[i + 1])) queue.push({m->rank, i, m->new_id});
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Entries go stale when a neighbour merged since they were queued.
    const MergeTarget* current = FindMerge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;

    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const MergeTarget* m = FindMerge(symbols[left.prev].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const MergeTarget* m = FindMerge(left.id, symbols[left.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace squat::tokenizer_internal
