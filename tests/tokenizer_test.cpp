// Tokenizer tests: exact agreement with HF `tokenizers` on the real Llama-2 / Llama-3 files
// (expected ids and text in tests/data, produced by the reference library), round trips and
// streaming on fresh random input, added tokens in text, hand-checked behaviour on tiny
// synthetic tokenizers, and load errors.
#include "runtime/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace squat {
namespace {

using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return "";
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// The real tokenizers are large (Llama-3: 9 MB of JSON), so each is loaded once per process.
const Tokenizer* RealTokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second.get();
  std::string path = std::string(SQUAT_TEST_TOKENIZERS_DIR) + "/" + name + "/tokenizer.json";
  auto tokenizer = Tokenizer::FromFile(path);
  if (!tokenizer.ok()) {
    ADD_FAILURE() << "cannot load " << path << " (run the fetch_test_tokenizers fixture): "
                  << tokenizer.status();
    return nullptr;
  }
  return (cache[name] = *std::move(tokenizer)).get();
}

// ---- UTF-8 helpers written for the test (independent of the code under test) ----------------

void AppendCodePoint(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Strict validation straight from the Unicode well-formed byte sequence table.
bool IsWellFormedUtf8(const std::string& s) {
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < s.size()) {
    unsigned char b = byte(i);
    int extra;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b < 0x80) {
      extra = 0;
    } else if (b >= 0xC2 && b <= 0xDF) {
      extra = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      extra = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      extra = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // cut short
    for (int k = 1; k <= extra; ++k) {
      unsigned char c = byte(i + k);
      unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (c < l || c > h) return false;
    }
    i += extra + 1;
  }
  return true;
}

// GPT-2's byte -> printable character table, rebuilt here from its definition.
uint32_t Gpt2CharForByte(int byte) {
  auto printable = [](int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  if (printable(byte)) return byte;
  int shifted = 0;
  for (int b = 0; b < byte; ++b) shifted += printable(b) ? 0 : 1;
  return 256 + shifted;
}

// The id of the token that stands for one raw byte: <0xXX> (byte fallback) or the GPT-2 char.
int32_t ByteTokenId(const Tokenizer& tokenizer, int byte) {
  char name[8];
  std::snprintf(name, sizeof(name), "<0x%02X>", byte);
  if (auto id = tokenizer.TokenToId(name)) return *id;
  std::string gpt2;
  AppendCodePoint(gpt2, Gpt2CharForByte(byte));
  auto id = tokenizer.TokenToId(gpt2);
  EXPECT_TRUE(id.has_value()) << "no token for byte " << byte;
  return id.value_or(0);
}

// ---- Random text --------------------------------------------------------------------------

uint32_t RandomCodePoint(std::mt19937_64& rng) {
  switch (rng() % 6) {
    case 0: return 0x20 + rng() % 95;                                 // printable ASCII
    case 1: return 0xA0 + rng() % 0x1E0;                              // Latin-1 / Latin ext.
    case 2: return 0x370 + rng() % 0x200;                             // Greek, Cyrillic
    case 3: return 0x4E00 + rng() % 0x5200;                           // CJK
    case 4: return 0x1F300 + rng() % 0x700;                           // emoji
    default: {                                                        // any scalar value
      uint32_t cp;
      do cp = 1 + rng() % 0x10FFFF; while (cp >= 0xD800 && cp <= 0xDFFF);
      return cp;
    }
  }
}

std::string RandomText(std::mt19937_64& rng, size_t max_parts) {
  static const char* kWords[] = {"the", "Hello", "world", "token", "ization", "don't", "I'm",
                                 "12345", "3.14", "x", "CamelCase", "snake_case", "!!", "?"};
  static const char* kSpaces[] = {" ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "   "};
  std::string text;
  size_t parts = rng() % (max_parts + 1);
  for (size_t i = 0; i < parts; ++i) {
    switch (rng() % 4) {
      case 0: text += kWords[rng() % std::size(kWords)]; break;
      case 1: text += kSpaces[rng() % std::size(kSpaces)]; break;
      default: {
        size_t n = 1 + rng() % 4;
        for (size_t k = 0; k < n; ++k) AppendCodePoint(text, RandomCodePoint(rng));
      }
    }
  }
  return text;
}

// Text that survives encode -> decode unchanged: no added-token lookalikes, and no U+2581
// (SentencePiece's space mark, which Llama-2 decodes as a space).
bool RoundTrippable(const std::string& text) {
  for (const char* bad : {"<s>", "</s>", "<unk>", "<|", "\xE2\x96\x81"}) {
    if (text.find(bad) != std::string::npos) return false;
  }
  return true;
}

std::mt19937_64 FreshRng(uint64_t* seed) {
  *seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  return std::mt19937_64(*seed);
}

std::string Escaped(const std::string& s) { return Json(s).dump(); }

// ---- Against the reference ----------------------------------------------------------------

class RealTokenizerTest : public ::testing::TestWithParam<std::string> {
 protected:
  const Tokenizer* tokenizer() { return RealTokenizer(GetParam()); }
};

TEST_P(RealTokenizerTest, MatchesHuggingFaceReference) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  std::string path =
      std::string(SQUAT_TEST_DATA_DIR) + "/tokenizer_expected_" + GetParam() + ".json";
  std::string text = ReadFile(path);
  ASSERT_FALSE(text.empty()) << "missing reference file " << path;
  Json expected = Json::parse(text);
  ASSERT_EQ(expected.at("tokenizer"), GetParam());
  const Json& cases = expected.at("cases");
  ASSERT_GE(cases.size(), 100u);

  int failures = 0;
  for (const Json& c : cases) {
    const std::string input = c.at("text").get<std::string>();
    const Ids ids = c.at("ids").get<Ids>();
    const Ids ids_no_special = c.at("ids_no_special").get<Ids>();
    const std::string decoded = c.at("decoded").get<std::string>();
    Ids got = tok->Encode(input, true);
    Ids got_no_special = tok->Encode(input, false);
    std::string got_decoded = tok->Decode(ids, true);
    bool ok = got == ids && got_no_special == ids_no_special && got_decoded == decoded;
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << "text " << Escaped(input) << "\n  ids       " << Json(got).dump()
                    << "\n  expected  " << Json(ids).dump() << "\n  no_special "
                    << Json(got_no_special).dump() << "\n  expected   "
                    << Json(ids_no_special).dump() << "\n  decoded " << Escaped(got_decoded)
                    << "\n  expected " << Escaped(decoded);
    }
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " cases";
}

TEST_P(RealTokenizerTest, RoundTripsRandomText) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  uint64_t seed;
  std::mt19937_64 rng = FreshRng(&seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int trial = 0; trial < 300; ++trial) {
    std::string text = RandomText(rng, 30);
    if (!RoundTrippable(text)) continue;
    Ids ids = tok->Encode(text, false);
    ASSERT_EQ(tok->Decode(ids, false), text) << Escaped(text);
    for (int32_t id : ids) ASSERT_FALSE(tok->IsSpecial(id)) << Escaped(text);
  }
}

TEST_P(RealTokenizerTest, AddedTokensInTextAreMatchedWhole) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  std::vector<int32_t> specials;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    if (tok->IsSpecial(id)) specials.push_back(id);
  }
  ASSERT_FALSE(specials.empty());
  uint64_t seed;
  std::mt19937_64 rng = FreshRng(&seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int trial = 0; trial < 50; ++trial) {
    std::string left = RandomText(rng, 6), right = RandomText(rng, 6);
    if (!RoundTrippable(left) || !RoundTrippable(right)) continue;
    int32_t special = specials[rng() % specials.size()];
    std::string content = tok->IdToToken(special);
    ASSERT_EQ(tok->TokenToId(content), special);
    // Every tokenizer here treats the text on each side of an added token on its own.
    Ids left_ids = tok->Encode(left, false), right_ids = tok->Encode(right, false);
    Ids expected = left_ids;
    expected.push_back(special);
    expected.insert(expected.end(), right_ids.begin(), right_ids.end());
    Ids got = tok->Encode(left + content + right, false);
    ASSERT_EQ(got, expected) << Escaped(left + content + right);
    // Skipping special tokens decodes as if the token had never been there.
    Ids without = left_ids;
    without.insert(without.end(), right_ids.begin(), right_ids.end());
    EXPECT_EQ(tok->Decode(got, true), tok->Decode(without, false));
    EXPECT_NE(tok->Decode(got, false).find(content), std::string::npos);
  }
}

// Feeds ids one at a time; checks every chunk is well-formed and the chunks add up to Decode.
void ExpectStreamMatchesDecode(const Tokenizer& tok, const Ids& ids, bool skip_special) {
  StreamingDecoder stream(tok, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    std::string chunk = stream.Push(id);
    ASSERT_TRUE(IsWellFormedUtf8(chunk)) << Escaped(chunk);
    streamed += chunk;
  }
  std::string rest = stream.Flush();
  ASSERT_TRUE(IsWellFormedUtf8(rest));
  streamed += rest;
  ASSERT_EQ(streamed, tok.Decode(ids, skip_special)) << "ids " << Json(ids).dump();
}

TEST_P(RealTokenizerTest, StreamingOfEncodedTextGivesTheText) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  uint64_t seed;
  std::mt19937_64 rng = FreshRng(&seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int trial = 0; trial < 100; ++trial) {
    std::string text = RandomText(rng, 20);
    if (!RoundTrippable(text)) continue;
    Ids ids = tok->Encode(text, true);
    ExpectStreamMatchesDecode(*tok, ids, true);
    StreamingDecoder stream(*tok);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Push(id);
    streamed += stream.Flush();
    ASSERT_EQ(streamed, text);
  }
}

TEST_P(RealTokenizerTest, StreamingMatchesDecodeOnRandomIds) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  std::vector<int32_t> specials;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    if (tok->IsSpecial(id)) specials.push_back(id);
  }
  uint64_t seed;
  std::mt19937_64 rng = FreshRng(&seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int trial = 0; trial < 150; ++trial) {
    Ids ids;
    size_t parts = 1 + rng() % 25;
    for (size_t p = 0; p < parts; ++p) {
      switch (rng() % 5) {
        case 0:  // any id, including ones past the vocab
          ids.push_back(static_cast<int32_t>(rng() % (tok->vocab_size() + 10)));
          break;
        case 1:  // a special token
          ids.push_back(specials[rng() % specials.size()]);
          break;
        case 2: {  // a multi-byte character cut into one token per byte
          std::string ch;
          AppendCodePoint(ch, RandomCodePoint(rng));
          for (char b : ch) ids.push_back(ByteTokenId(*tok, static_cast<unsigned char>(b)));
          break;
        }
        case 3: {  // a character cut short, or stray continuation bytes
          std::string ch;
          AppendCodePoint(ch, 0x800 + rng() % 0x10000);
          ch.resize(1 + rng() % (ch.size() - 1));
          if (rng() % 2) ch = std::string(1 + rng() % 2, static_cast<char>(0x80 + rng() % 64));
          for (char b : ch) ids.push_back(ByteTokenId(*tok, static_cast<unsigned char>(b)));
          break;
        }
        default: {  // ordinary text
          Ids text_ids = tok->Encode(RandomText(rng, 3), false);
          ids.insert(ids.end(), text_ids.begin(), text_ids.end());
        }
      }
    }
    ExpectStreamMatchesDecode(*tok, ids, true);
    ExpectStreamMatchesDecode(*tok, ids, false);
  }
}

TEST_P(RealTokenizerTest, InvalidUtf8InputIsReadAsReplacementCharacters) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  // "\xE4\xB8" is a truncated 3-byte sequence (one U+FFFD); "\xFF" is never valid (one U+FFFD).
  EXPECT_EQ(tok->Encode("a\xE4\xB8 b\xFF", false), tok->Encode("a\uFFFD b\uFFFD", false));
}

TEST_P(RealTokenizerTest, VocabularyAccessors) {
  const Tokenizer* tok = tokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->IdToToken(-1), "");
  EXPECT_EQ(tok->IdToToken(tok->vocab_size()), "");
  EXPECT_FALSE(tok->TokenToId("definitely not a token \x01").has_value());
  uint64_t seed;
  std::mt19937_64 rng = FreshRng(&seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int i = 0; i < 200; ++i) {
    int32_t id = static_cast<int32_t>(rng() % tok->vocab_size());
    std::string token = tok->IdToToken(id);
    if (token.empty()) continue;  // a hole in the id space
    EXPECT_EQ(tok->TokenToId(token), id) << Escaped(token);
  }
}

INSTANTIATE_TEST_SUITE_P(Real, RealTokenizerTest, ::testing::Values("llama2", "llama3"),
                         [](const auto& info) { return info.param; });

TEST(RealTokenizerDetails, ByteLevelDecodeReplacesEachIllFormedSubpartOnce) {
  const Tokenizer* tok = RealTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  int32_t a = ByteTokenId(*tok, 'A');
  // E4 B8 is the start of a 3-byte character cut short: one maximal subpart, one U+FFFD.
  EXPECT_EQ(tok->Decode({ByteTokenId(*tok, 0xE4), ByteTokenId(*tok, 0xB8), a}), "\uFFFD" "A");
  // Two lone continuation bytes are two subparts.
  EXPECT_EQ(tok->Decode({ByteTokenId(*tok, 0x80), ByteTokenId(*tok, 0x80), a}),
            "\uFFFD\uFFFD" "A");
}

TEST(RealTokenizerDetails, ByteFallbackDecodeReplacesEveryByteOfAnInvalidRun) {
  const Tokenizer* tok = RealTokenizer("llama2");
  ASSERT_NE(tok, nullptr);
  int32_t a = *tok->TokenToId("A");
  // HF's ByteFallback: a run of byte tokens that is not valid UTF-8 gives one U+FFFD per byte.
  EXPECT_EQ(tok->Decode({ByteTokenId(*tok, 0xE4), ByteTokenId(*tok, 0xB8), a}),
            "\uFFFD\uFFFD" "A");
  EXPECT_EQ(tok->Decode({ByteTokenId(*tok, 0xE4), ByteTokenId(*tok, 0xB8),
                         ByteTokenId(*tok, 0xAD)}),
            "\u4E2D");
}

TEST(RealTokenizerDetails, StreamingHoldsBackIncompleteCharacters) {
  const Tokenizer* tok = RealTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  StreamingDecoder stream(*tok);
  EXPECT_EQ(stream.Push(ByteTokenId(*tok, 0xE4)), "");
  EXPECT_EQ(stream.Push(ByteTokenId(*tok, 0xB8)), "");
  EXPECT_EQ(stream.Push(ByteTokenId(*tok, 0xAD)), "\u4E2D");
  EXPECT_EQ(stream.Push(ByteTokenId(*tok, 0xF0)), "");
  EXPECT_EQ(stream.Flush(), "\uFFFD");
}

// ---- Tiny synthetic tokenizers: expectations worked out by hand ----------------------------

Json TinyBpe(Json vocab, Json merges) {
  return Json{{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model",
               {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", std::move(merges)}}}};
}

std::unique_ptr<Tokenizer> Load(const Json& spec) {
  auto tokenizer = Tokenizer::FromJson(spec.dump());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

const Json kAbcVocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}};

TEST(TinyTokenizer, MergesApplyLowestRankFirst) {
  // "b c" outranks "a b", so "abc" is a + bc, then the third merge joins them.
  auto tok = Load(TinyBpe(kAbcVocab, {"b c", "a b", "a bc"}));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("abc", false), (Ids{5}));
  EXPECT_EQ(tok->Encode("abab", false), (Ids{3, 3}));
  EXPECT_EQ(tok->Encode("bcab", false), (Ids{4, 3}));
  // With "a b" first, "abc" becomes ab + c and no merge joins those.
  auto other = Load(TinyBpe(kAbcVocab, Json::array({Json::array({"a", "b"}), "b c", "a bc"})));
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->Encode("abc", false), (Ids{3, 2}));
  // Equal pairs merge left to right: "aaa" with "a a" is aa + a.
  auto left = Load(TinyBpe({{"a", 0}, {"aa", 1}}, {"a a"}));
  ASSERT_NE(left, nullptr);
  EXPECT_EQ(left->Encode("aaa", false), (Ids{1, 0}));
  EXPECT_EQ(left->Decode({1, 0}), "aa a");  // without a decoder, tokens are joined by spaces
}

TEST(TinyTokenizer, IgnoreMergesEmitsWholeVocabWords) {
  Json spec = TinyBpe(kAbcVocab, {"a b"});
  auto plain = Load(spec);
  spec["model"]["ignore_merges"] = true;
  auto ignoring = Load(spec);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_EQ(plain->Encode("abc", false), (Ids{3, 2}));
  EXPECT_EQ(ignoring->Encode("abc", false), (Ids{5}));
}

TEST(TinyTokenizer, UnknownCharactersUseUnkFusedOrNot) {
  Json vocab = kAbcVocab;
  vocab["<unk>"] = 6;
  Json spec = TinyBpe(vocab, Json::array());
  spec["model"]["unk_token"] = "<unk>";
  spec["model"]["fuse_unk"] = true;
  auto fused = Load(spec);
  spec["model"]["fuse_unk"] = false;
  auto separate = Load(spec);
  spec["model"]["unk_token"] = nullptr;
  auto dropping = Load(spec);
  ASSERT_NE(fused, nullptr);
  ASSERT_NE(separate, nullptr);
  ASSERT_NE(dropping, nullptr);
  EXPECT_EQ(fused->Encode("xy\u00e9a", false), (Ids{6, 0}));
  EXPECT_EQ(separate->Encode("xy\u00e9a", false), (Ids{6, 6, 6, 0}));
  EXPECT_EQ(dropping->Encode("xya", false), (Ids{0}));
}

TEST(TinyTokenizer, ByteFallbackSpellsUnknownCharactersInBytes) {
  Json vocab = kAbcVocab;
  vocab["<0xC3>"] = 10;
  vocab["<0xA9>"] = 11;
  Json spec = TinyBpe(vocab, Json::array());
  spec["model"]["byte_fallback"] = true;
  spec["decoder"] = {{"type", "Sequence"},
                     {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("a\u00e9", false), (Ids{0, 10, 11}));  // é = C3 A9
  EXPECT_EQ(tok->Decode({0, 10, 11}), "a\u00e9");
  EXPECT_EQ(tok->Decode({10, 0}), "\uFFFD" "a");  // a lone lead byte
}

TEST(TinyTokenizer, MetaspaceSplitsOnSpacesAndDecodesBack) {
  Json vocab = {{"\u2581a", 0}, {"\u2581b", 1}, {"\u2581", 2}, {"b", 3}, {"a", 4}};
  Json spec = TinyBpe(vocab, {"\u2581 a", "\u2581 b"});
  spec["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"},
                           {"prepend_scheme", "always"}, {"split", true}};
  spec["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"},
                     {"prepend_scheme", "always"}, {"split", true}};
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  // "a b" -> "▁a▁b" -> pieces "▁a", "▁b".
  EXPECT_EQ(tok->Encode("a b", false), (Ids{0, 1}));
  // "a  b" -> "▁a", "▁", "▁b".
  EXPECT_EQ(tok->Encode("a  b", false), (Ids{0, 2, 1}));
  EXPECT_EQ(tok->Decode({0, 2, 1}), "a  b");
}

TEST(TinyTokenizer, NfcNormalizerComposesCanonically) {
  // One token per character and no merges, so the ids spell the normalized text.
  Json vocab = {{"\u00e9", 0},  {"e", 1},      {"\u0301", 2}, {"\u00c5", 3},
                {"\uac01", 4},  {"\u0915", 5}, {"\u093c", 6}, {"\u1ea1", 7},
                {"\u0307", 8},  {"a", 9},      {"\u0323", 10}, {"\u212b", 11}};
  Json spec = TinyBpe(vocab, Json::array());
  spec["normalizer"] = {{"type", "NFC"}};
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("e\u0301", false), (Ids{0}));          // e + acute -> é
  EXPECT_EQ(tok->Encode("\u00e9", false), (Ids{0}));           // already composed
  EXPECT_EQ(tok->Encode("\u212b", false), (Ids{3}));           // Angstrom sign -> Å
  EXPECT_EQ(tok->Encode("\u1100\u1161\u11a8", false), (Ids{4}));  // Hangul jamo -> 각
  EXPECT_EQ(tok->Encode("\u0958", false), (Ids{5, 6}));        // QA is excluded from composition
  // Marks are put in canonical order (dot below, class 220, before dot above, 230) and only
  // the first composes with the letter.
  EXPECT_EQ(tok->Encode("a\u0307\u0323", false), (Ids{7, 8}));
  EXPECT_EQ(tok->Encode("a\u0323\u0307", false), (Ids{7, 8}));
}

TEST(TinyTokenizer, SplitBehaviours) {
  Json vocab = {{"a", 0}, {"b", 1}, {"-", 2}, {"a-", 3}, {"-b", 4}, {"ab", 5}};
  Json merges = {"a -", "- b", "a b"};
  auto encode_with = [&](const char* behavior) {
    Json spec = TinyBpe(vocab, merges);
    spec["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}},
                             {"behavior", behavior}, {"invert", false}};
    auto tok = Load(spec);
    return tok ? tok->Encode("a-b", false) : Ids{};
  };
  // No merge crosses a piece boundary, so the pieces show in the ids.
  EXPECT_EQ(encode_with("Isolated"), (Ids{0, 2, 1}));
  EXPECT_EQ(encode_with("Removed"), (Ids{0, 1}));
  EXPECT_EQ(encode_with("MergedWithPrevious"), (Ids{3, 1}));
  EXPECT_EQ(encode_with("MergedWithNext"), (Ids{0, 4}));
  EXPECT_EQ(encode_with("Contiguous"), (Ids{0, 2, 1}));
}

TEST(TinyTokenizer, AddedTokensStripNeighbouringSpaceWhenAsked) {
  Json spec = TinyBpe({{"a", 0}, {"b", 1}, {" ", 2}}, Json::array());
  spec["added_tokens"] = {{{"id", 3}, {"content", "<m>"}, {"single_word", false},
                           {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                           {"special", true}}};
  auto plain = Load(spec);
  spec["added_tokens"][0]["lstrip"] = true;
  spec["added_tokens"][0]["rstrip"] = true;
  auto stripping = Load(spec);
  spec["added_tokens"][0]["lstrip"] = false;
  spec["added_tokens"][0]["rstrip"] = false;
  spec["added_tokens"][0]["single_word"] = true;
  auto single_word = Load(spec);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(stripping, nullptr);
  ASSERT_NE(single_word, nullptr);
  EXPECT_EQ(plain->Encode("a <m> b", false), (Ids{0, 2, 3, 2, 1}));
  EXPECT_EQ(stripping->Encode("a <m> b", false), (Ids{0, 3, 1}));
  EXPECT_EQ(single_word->Encode("a <m> b", false), (Ids{0, 2, 3, 2, 1}));
  // Inside a word the single_word token is not matched and its characters are unknown.
  EXPECT_EQ(single_word->Encode("a<m>b", false), (Ids{0, 1}));
  EXPECT_EQ(plain->Decode({0, 3, 1}, true), "a b");
  EXPECT_EQ(plain->Decode({0, 3, 1}, false), "a <m> b");
  EXPECT_TRUE(plain->IsSpecial(3));
  EXPECT_FALSE(plain->IsSpecial(0));
  EXPECT_EQ(plain->vocab_size(), 4);
}

TEST(TinyTokenizer, TemplatePostProcessorOnlyWithSpecialTokens) {
  Json spec = TinyBpe({{"a", 0}, {"<s>", 1}, {"</s>", 2}}, Json::array());
  spec["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single",
       {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
      {"pair", Json::array()},
      {"special_tokens",
       {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}},
        {"</s>", {{"id", "</s>"}, {"ids", {2}}, {"tokens", {"</s>"}}}}}}};
  auto tok = Load(spec);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("aa", true), (Ids{1, 0, 0, 2}));
  EXPECT_EQ(tok->Encode("aa", false), (Ids{0, 0}));
  EXPECT_EQ(tok->Encode("", true), (Ids{1, 2}));
}

// ---- Load errors ----------------------------------------------------------------------------

void ExpectLoadError(const std::string& text, const std::string& must_mention) {
  auto tokenizer = Tokenizer::FromJson(text);
  ASSERT_FALSE(tokenizer.ok()) << "loaded: " << text.substr(0, 200);
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(tokenizer.status().message()).find(must_mention), std::string::npos)
      << tokenizer.status();
}

TEST(TokenizerErrors, RejectsMalformedOrUnsupportedFiles) {
  ExpectLoadError("{\"model\": {", "malformed JSON");
  ExpectLoadError("[1, 2]", "object");
  ExpectLoadError("{}", "model");

  Json unigram = TinyBpe(kAbcVocab, Json::array());
  unigram["model"]["type"] = "Unigram";
  ExpectLoadError(unigram.dump(), "Unigram");

  Json bad_regex = TinyBpe(kAbcVocab, Json::array());
  bad_regex["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                {"behavior", "Isolated"}, {"invert", false}};
  ExpectLoadError(bad_regex.dump(), "regex");

  Json bad_merge = TinyBpe(kAbcVocab, {"a zz"});
  ExpectLoadError(bad_merge.dump(), "merges[0]");

  Json bad_vocab = TinyBpe(kAbcVocab, Json::array());
  bad_vocab["model"]["vocab"]["a"] = "zero";
  ExpectLoadError(bad_vocab.dump(), "vocab");

  Json bad_normalizer = TinyBpe(kAbcVocab, Json::array());
  bad_normalizer["normalizer"] = {{"type", "NoSuchNormalizer"}};
  ExpectLoadError(bad_normalizer.dump(), "NoSuchNormalizer");

  Json bad_decoder = TinyBpe(kAbcVocab, Json::array());
  bad_decoder["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", "one"}, {"stop", 0}};
  ExpectLoadError(bad_decoder.dump(), "decoder Strip");

  Json bad_added = TinyBpe(kAbcVocab, Json::array());
  bad_added["added_tokens"] = {{{"content", "<x>"}}};
  ExpectLoadError(bad_added.dump(), "added_tokens[0]");

  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace squat
