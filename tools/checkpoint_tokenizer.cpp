#include "tools/checkpoint_tokenizer.h"

#include <map>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace squat::checkpoint {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr int64_t kByteTokens = 256;
constexpr int64_t kNamedSpecials = 2;  // begin_of_text, end_of_text

bool IsLetter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsSpace(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

void AppendUtf8(uint32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

// GPT-2's reversible byte -> printable code point map, as UTF-8.
std::string ByteToUnicode(unsigned char byte) {
  // Printable Latin-1 bytes map to themselves; the other 68 bytes are shifted to 256 + k in
  // byte order, so every byte becomes a visible, non-space character.
  const auto printable = [](unsigned c) {
    return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
  };
  uint32_t code_point = byte;
  if (!printable(byte)) {
    uint32_t shifted = 0;
    for (unsigned c = 0; c < byte; ++c) {
      if (!printable(c)) ++shifted;
    }
    code_point = 256 + shifted;
  }
  std::string out;
  AppendUtf8(code_point, &out);
  return out;
}

// The GPT-2 pre-tokenizer split for ASCII text (bytes >= 0x80 count as letters).
std::vector<std::string> SplitLikeGpt2(std::string_view text) {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  std::vector<std::string> pieces;
  const size_t n = text.size();
  auto at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    if (at(i) == '\'') {
      bool matched = false;
      for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
        if (text.substr(i + 1, suffix.size()) == suffix) {
          i += 1 + suffix.size();
          matched = true;
          break;
        }
      }
      if (matched) {
        pieces.emplace_back(text.substr(start, i - start));
        continue;
      }
    }
    const size_t body = (at(i) == ' ' && i + 1 < n) ? i + 1 : i;  // optional leading space
    if (IsLetter(at(body))) {
      for (i = body; i < n && IsLetter(at(i));) ++i;
    } else if (IsDigit(at(body))) {
      for (i = body; i < n && IsDigit(at(i));) ++i;
    } else if (!IsSpace(at(body))) {
      for (i = body; i < n && !IsSpace(at(i)) && !IsLetter(at(i)) && !IsDigit(at(i));) ++i;
    } else {
      // Whitespace run: leave its last character to prefix the following word.
      size_t end = i;
      while (end < n && IsSpace(at(end))) ++end;
      i = (end < n && end - i > 1) ? end - 1 : end;
    }
    pieces.emplace_back(text.substr(start, i - start));
  }
  return pieces;
}

// The paragraphs the merges are learned from.
std::string_view TrainingText() {
  return "The lighthouse on the northern point was built in 1871, and for most of its life it "
         "was kept by one family. Every evening the keeper climbed the ninety-two steps, trimmed "
         "the wick, polished the lens and wrote the weather into a thick book: wind from the west, "
         "light rain, two ships passing before midnight. In the morning he climbed the steps "
         "again to put the light out. It's a quiet job, his daughter wrote later, but it is never "
         "an empty one. There was always a window to clean, a hinge to oil, a bell to test when "
         "the fog came in from the sea. The fishermen of the village said they could set their "
         "clocks by the lamp, and the children said the keeper knew the name of every boat in "
         "the harbor. When the light was finally made automatic in 1964, the family moved into "
         "a small house near the school. The keeper's daughter kept the weather books, all "
         "forty-three of them, and she read them again when she was old. She said that the "
         "books were not really about the weather. They were about waiting, and about watching "
         "the water, and about the long, patient work of keeping a small light burning so that "
         "other people could find their way home. Today the lighthouse is a museum. Visitors "
         "climb the same ninety-two steps, look out over the same gray water, and read the "
         "same careful handwriting in the books that are kept in a glass case near the door. "
         "Some of them stay for an hour; some of them stay until the evening, when the lamp, "
         "now switched on by a timer, begins to turn and the first beam sweeps across the "
         "waves. They're often surprised by how bright it is, and by how far the light can "
         "reach. We'll never know exactly how many ships it saved, the museum's sign says, "
         "but we know that every one of them came home.\n\n"
         "On the other side of the bay there is a bakery that opens at five in the morning. "
         "The baker, a tall man with flour on his sleeves, says that bread teaches patience "
         "better than any teacher he ever had. You can't hurry the dough, he tells the young "
         "people who come to work for him; you can only give it warmth and time and then wait. "
         "He mixes the first batch at three, shapes the loaves at four and pulls them from the "
         "oven just as the sky turns from black to blue. By six there is a line at the door: "
         "fishermen on their way to the boats, nurses coming home from the night shift, and a "
         "teacher who buys the same two rolls every day and eats one of them on the walk to "
         "school. The baker knows what most of them will order before they say a word. On "
         "Saturdays he makes a sweet bread with raisins and orange peel, and on Sundays the "
         "bakery is closed so that he can sleep, read the newspaper and walk along the water "
         "to the old lighthouse. He has done this for twenty-six years. When people ask him "
         "whether he is tired of it, he laughs and says that the bread is never quite the same "
         "twice: the weather changes, the flour changes, and he changes too. That is what "
         "keeps the work interesting, he says, and that is why he still gets up in the dark.";
}

// Learns merges over the pre-tokenized training words. Symbols are indices into `tokens`.
struct BpeTrainer {
  std::vector<std::string> tokens;       // id -> byte-level string
  std::map<std::string, int32_t> id_of;  // byte-level string -> id
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;  // symbols, occurrence count

  BpeTrainer() {
    for (int b = 0; b < 256; ++b) {
      tokens.push_back(ByteToUnicode(static_cast<unsigned char>(b)));
      id_of[tokens.back()] = b;
    }
  }

  void AddText(std::string_view text) {
    std::map<std::string, int64_t> counts;
    for (const std::string& word : SplitLikeGpt2(text)) ++counts[word];
    for (const auto& [word, count] : counts) {
      std::vector<int32_t> symbols;
      for (unsigned char c : word) symbols.push_back(c);
      words.emplace_back(std::move(symbols), count);
    }
  }

  // Adds up to `new_tokens` vocabulary entries; stops early when no adjacent pair repeats.
  void Train(int64_t new_tokens) {
    int64_t added = 0;
    while (added < new_tokens) {
      std::map<std::pair<int32_t, int32_t>, int64_t> pair_counts;
      for (const auto& [symbols, count] : words) {
        for (size_t i = 0; i + 1 < symbols.size(); ++i) pair_counts[{symbols[i], symbols[i + 1]}] += count;
      }
      // Most frequent pair; the map's order breaks ties deterministically (lowest ids first).
      std::pair<int32_t, int32_t> best{-1, -1};
      int64_t best_count = 1;
      for (const auto& [pair, count] : pair_counts) {
        if (count > best_count) {
          best = pair;
          best_count = count;
        }
      }
      if (best.first < 0) return;  // every pair occurs once: nothing left worth merging

      const std::string merged = tokens[best.first] + tokens[best.second];
      int32_t merged_id;
      auto existing = id_of.find(merged);
      if (existing != id_of.end()) {
        // Another merge order already produced this string; reuse its id.
        merged_id = existing->second;
      } else {
        merged_id = static_cast<int32_t>(tokens.size());
        tokens.push_back(merged);
        id_of[merged] = merged_id;
        ++added;
      }
      merges.push_back(best);
      for (auto& [symbols, count] : words) {
        std::vector<int32_t> next;
        next.reserve(symbols.size());
        for (size_t i = 0; i < symbols.size(); ++i) {
          if (i + 1 < symbols.size() && symbols[i] == best.first && symbols[i + 1] == best.second) {
            next.push_back(merged_id);
            ++i;
          } else {
            next.push_back(symbols[i]);
          }
        }
        symbols = std::move(next);
      }
    }
  }
};

ordered_json AddedToken(int32_t id, const std::string& content) {
  return ordered_json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                      {"rstrip", false}, {"normalized", false}, {"special", true}};
}

ordered_json SpecialTokenPiece(const char* sequence_or_token, const std::string& id, int type_id) {
  return ordered_json{{sequence_or_token, {{"id", id}, {"type_id", type_id}}}};
}

}  // namespace

absl::StatusOr<GeneratedTokenizer> BuildByteLevelTokenizer(int64_t vocab_size, int64_t model_max_length) {
  if (vocab_size < kByteTokens + kNamedSpecials) {
    return absl::InvalidArgumentError(absl::StrCat("vocab size ", vocab_size, " is below the minimum ",
                                                   kByteTokens + kNamedSpecials,
                                                   " (256 byte tokens + 2 special tokens)"));
  }
  if (vocab_size > INT32_MAX) return absl::InvalidArgumentError("vocab size does not fit int32 ids");
  BpeTrainer trainer;
  trainer.AddText(TrainingText());
  trainer.Train(vocab_size - kByteTokens - kNamedSpecials);

  GeneratedTokenizer result;
  result.num_merges = static_cast<int64_t>(trainer.merges.size());
  const int32_t first_special = static_cast<int32_t>(trainer.tokens.size());
  result.bos_id = first_special;
  result.eos_id = first_special + 1;

  ordered_json added_tokens = ordered_json::array();
  added_tokens.push_back(AddedToken(result.bos_id, kBeginOfText));
  added_tokens.push_back(AddedToken(result.eos_id, kEndOfText));
  for (int64_t id = result.eos_id + 1, n = 0; id < vocab_size; ++id, ++n) {
    added_tokens.push_back(AddedToken(static_cast<int32_t>(id), absl::StrCat("<|reserved_", n, "|>")));
  }

  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < trainer.tokens.size(); ++id) vocab[trainer.tokens[id]] = id;
  ordered_json merges = ordered_json::array();
  for (const auto& [left, right] : trainer.merges) {
    merges.push_back(absl::StrCat(trainer.tokens[left], " ", trainer.tokens[right]));
  }

  const std::string bos = kBeginOfText;
  ordered_json post_processor = {
      {"type", "TemplateProcessing"},
      {"single", {SpecialTokenPiece("SpecialToken", bos, 0), SpecialTokenPiece("Sequence", "A", 0)}},
      {"pair",
       {SpecialTokenPiece("SpecialToken", bos, 0), SpecialTokenPiece("Sequence", "A", 0),
        SpecialTokenPiece("SpecialToken", bos, 1), SpecialTokenPiece("Sequence", "B", 1)}},
      {"special_tokens", {{bos, {{"id", bos}, {"ids", {result.bos_id}}, {"tokens", {bos}}}}}},
  };

  ordered_json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added_tokens)},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", std::move(post_processor)},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", std::move(vocab)},
        {"merges", std::move(merges)}}},
  };
  result.tokenizer_json = tokenizer.dump(2);

  ordered_json config = {
      {"bos_token", kBeginOfText},
      {"eos_token", kEndOfText},
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", model_max_length},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
  };
  result.tokenizer_config_json = config.dump(2);
  return result;
}

}  // namespace squat::checkpoint
