#include "runtime/tokenizer/utf8.h"

#include <array>

namespace squat::tokenizer_internal {
namespace {

bool InRange(uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; }

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_text;
  std::array<int16_t, 512> code_point_to_byte;  // every mapped code point is below 512

  ByteLevelTables() {
    code_point_to_byte.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to 256 + n,
    // in byte order, so that every byte has a visible, non-whitespace character.
    int next_shifted = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = InRange(b, '!', '~') || InRange(b, 0xA1, 0xAC) || InRange(b, 0xAE, 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(next_shifted++);
      AppendUtf8(byte_to_text[b], cp);
      code_point_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

Utf8Char DecodeUtf8(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  uint8_t lead = byte(pos);
  if (lead < 0x80) return {lead, 1, true};

  int needed;              // continuation bytes after the lead
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  char32_t cp;
  if (InRange(lead, 0xC2, 0xDF)) {
    needed = 1;
    cp = lead & 0x1F;
  } else if (InRange(lead, 0xE0, 0xEF)) {
    needed = 2;
    cp = lead & 0x0F;
    if (lead == 0xE0) lo = 0xA0;  // no overlongs
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (InRange(lead, 0xF0, 0xF4)) {
    needed = 3;
    cp = lead & 0x07;
    if (lead == 0xF0) lo = 0x90;  // no overlongs
    if (lead == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {kReplacementChar, 1, false};
  }
  int length = 1;
  for (int k = 0; k < needed; ++k) {
    size_t i = pos + length;
    uint8_t c = i < s.size() ? byte(i) : 0;
    bool ok = i < s.size() && (k == 0 ? InRange(c, lo, hi) : InRange(c, 0x80, 0xBF));
    if (!ok) return {kReplacementChar, length, false};
    cp = (cp << 6) | (c & 0x3F);
    ++length;
  }
  return {cp, length, true};
}

void AppendUtf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    Utf8Char c = DecodeUtf8(s, pos);
    if (!c.valid) return false;
    pos += c.length;
  }
  return true;
}

std::string ToValidUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    Utf8Char c = DecodeUtf8(bytes, pos);
    if (c.valid) {
      out.append(bytes.substr(pos, c.length));
    } else {
      out.append(kReplacementUtf8);
    }
    pos += c.length;
  }
  return out;
}

bool EndsWithReplacementChar(std::string_view s) {
  return s.size() >= kReplacementUtf8.size() &&
         s.substr(s.size() - kReplacementUtf8.size()) == kReplacementUtf8;
}

bool IsUnicodeWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

const std::string& ByteToUnicode(uint8_t byte) { return Tables().byte_to_text[byte]; }

int UnicodeToByte(char32_t cp) {
  return cp < Tables().code_point_to_byte.size() ? Tables().code_point_to_byte[cp] : -1;
}

}  // namespace squat::tokenizer_internal
