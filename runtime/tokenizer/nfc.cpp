// Unicode NFC / NFD (UAX #15): full canonical decomposition, canonical ordering, canonical
// composition, with Hangul syllables handled algorithmically.
//
// tokenizer_nfc_data.cpp is generated; to regenerate (e.g. for a newer Unicode version) run
// the script below with `python3 - > runtime/tokenizer/nfc_data.cpp`:
//
//   import unicodedata as ud
//
//   def canonical(cp):
//       d = ud.decomposition(chr(cp))
//       return [] if not d or d.startswith("<") else [int(x, 16) for x in d.split()]
//
//   hangul = range(0xAC00, 0xD7A4)  # decomposed and composed algorithmically
//   ccc = [(cp, ud.combining(chr(cp))) for cp in range(0x110000) if ud.combining(chr(cp))]
//   decomposable = [cp for cp in range(0x110000) if canonical(cp) and cp not in hangul]
//   composites = sorted((canonical(cp)[0], canonical(cp)[1], cp) for cp in decomposable
//                       if len(canonical(cp)) == 2 and ud.normalize("NFC", ud.normalize("NFD", chr(cp))) == chr(cp))
//
//   def rows(items, per_line):
//       for i in range(0, len(items), per_line):
//           print("    " + " ".join(items[i:i + per_line]))
//
//   print("// Unicode %s canonical normalization data for NFC (tokenizer_nfc.cpp). Generated from" % ud.unidata_version)
//   print("// Python's unicodedata; the generator is in tokenizer_nfc.cpp's header comment.")
//   print('#include "runtime/tokenizer/nfc.h"\n')
//   print("namespace squat::tokenizer_internal::nfc_data {\n")
//   print("const CombiningClass kCombiningClasses[] = {")
//   rows(["{0x%X, %d}," % c for c in ccc], 6)
//   print("};\nconst size_t kCombiningClassCount = sizeof(kCombiningClasses) / sizeof(kCombiningClasses[0]);\n")
//   chars, entries = [], []
//   for cp in decomposable:
//       full = [ord(c) for c in ud.normalize("NFD", chr(cp))]
//       entries.append("{0x%X, %d, %d}," % (cp, len(chars), len(full)))
//       chars += ["0x%X," % c for c in full]
//   print("const Decomposition kDecompositions[] = {")
//   rows(entries, 4)
//   print("};\nconst size_t kDecompositionCount = sizeof(kDecompositions) / sizeof(kDecompositions[0]);\n")
//   print("const char32_t kDecompositionChars[] = {")
//   rows(chars, 8)
//   print("};\n")
//   print("const Composition kCompositions[] = {")
//   rows(["{0x%X, 0x%X, 0x%X}," % c for c in composites], 3)
//   print("};\nconst size_t kCompositionCount = sizeof(kCompositions) / sizeof(kCompositions[0]);\n")
//   print("}  // namespace squat::tokenizer_internal::nfc_data")

#include "runtime/tokenizer/nfc.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

// Hangul syllable arithmetic (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t CombiningClassOf(char32_t cp) {
  using nfc_data::CombiningClass;
  const CombiningClass* end = nfc_data::kCombiningClasses + nfc_data::kCombiningClassCount;
  const CombiningClass* it = std::lower_bound(
      nfc_data::kCombiningClasses, end, cp,
      [](const CombiningClass& entry, char32_t key) { return entry.code_point < key; });
  return it != end && it->code_point == cp ? it->combining_class : 0;
}

void AppendDecomposition(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    char32_t index = cp - kSBase;
    out.push_back(kLBase + index / kNCount);
    out.push_back(kVBase + (index % kNCount) / kTCount);
    if (index % kTCount != 0) out.push_back(kTBase + index % kTCount);
    return;
  }
  using nfc_data::Decomposition;
  const Decomposition* end = nfc_data::kDecompositions + nfc_data::kDecompositionCount;
  const Decomposition* it = std::lower_bound(
      nfc_data::kDecompositions, end, cp,
      [](const Decomposition& entry, char32_t key) { return entry.code_point < key; });
  if (it != end && it->code_point == cp) {
    out.insert(out.end(), nfc_data::kDecompositionChars + it->offset,
               nfc_data::kDecompositionChars + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of a pair, or 0.
char32_t Compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  using nfc_data::Composition;
  const Composition* end = nfc_data::kCompositions + nfc_data::kCompositionCount;
  const Composition* it =
      std::lower_bound(nfc_data::kCompositions, end, std::make_pair(first, second),
                       [](const Composition& entry, std::pair<char32_t, char32_t> key) {
                         return std::make_pair(entry.first, entry.second) < key;
                       });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

// Every code point below U+0300 is stable under NFC (precomposed Latin-1 letters included,
// and nothing below U+0300 combines), and those are exactly the characters whose UTF-8 lead
// byte is below 0xCC.
bool OnlyBelowU0300(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<uint8_t>(c) < 0xCC; });
}

bool IsAscii(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<uint8_t>(c) < 0x80; });
}

std::vector<char32_t> DecomposeAndOrder(std::string_view text) {
  std::vector<char32_t> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    Utf8Char c = DecodeUtf8(text, pos);
    AppendDecomposition(c.code_point, chars);
    pos += c.length;
  }
  // Canonical ordering: a stable sort of each run of non-starters by combining class.
  for (size_t i = 1; i < chars.size(); ++i) {
    uint8_t cc = CombiningClassOf(chars[i]);
    if (cc == 0) continue;
    for (size_t j = i; j > 0 && CombiningClassOf(chars[j - 1]) > cc; --j) {
      std::swap(chars[j - 1], chars[j]);
    }
  }
  return chars;
}

std::string Encode(const std::vector<char32_t>& chars) {
  std::string out;
  out.reserve(chars.size());
  for (char32_t cp : chars) AppendUtf8(out, cp);
  return out;
}

}  // namespace

std::string ToNfd(std::string_view text) {
  if (IsAscii(text)) return std::string(text);
  return Encode(DecomposeAndOrder(text));
}

std::string ToNfc(std::string_view text) {
  if (OnlyBelowU0300(text)) return std::string(text);
  std::vector<char32_t> chars = DecomposeAndOrder(text);
  std::vector<char32_t> out;
  out.reserve(chars.size());
  size_t starter = SIZE_MAX;  // index in `out` of the last starter
  uint8_t last_class = 0;     // class of the last character kept after that starter
  for (char32_t c : chars) {
    uint8_t cc = CombiningClassOf(c);
    if (starter != SIZE_MAX) {
      bool adjacent = out.size() == starter + 1;
      // A character between the starter and c blocks them when its class is 0 or >= c's.
      bool blocked = !adjacent && (last_class == 0 || last_class >= cc);
      if (!blocked) {
        if (char32_t composite = Compose(out[starter], c)) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = out.size();
    last_class = cc;
    out.push_back(c);
  }
  return Encode(out);
}

}  // namespace squat::tokenizer_internal
