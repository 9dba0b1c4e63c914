// UTF-8 helpers and the GPT-2 byte <-> unicode table used by byte-level BPE (private to squat_tokenizer).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace squat::tokenizer_internal {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

struct Utf8Char {
  char32_t code_point;  // kReplacementChar when !valid
  int length;           // bytes consumed, >= 1 (a maximal ill-formed subpart when !valid)
  bool valid;
};

// Decodes the character at s[pos] (pos < s.size()). Ill-formed input is consumed one maximal
// subpart at a time (Unicode 3.9 / WHATWG), which is what Rust's from_utf8_lossy does.
Utf8Char DecodeUtf8(std::string_view s, size_t pos);

void AppendUtf8(std::string& out, char32_t code_point);

bool IsValidUtf8(std::string_view s);

// Replaces every maximal ill-formed subpart with U+FFFD.
std::string ToValidUtf8(std::string_view bytes);

bool EndsWithReplacementChar(std::string_view s);

// Unicode White_Space (what Rust's char::is_whitespace and regex \s accept).
bool IsUnicodeWhitespace(char32_t code_point);

// GPT-2's bytes_to_unicode: the UTF-8 text of the printable character that stands for `byte`.
const std::string& ByteToUnicode(uint8_t byte);
// The inverse: the byte a code point stands for, or -1 when it is not in the table.
int UnicodeToByte(char32_t code_point);

}  // namespace squat::tokenizer_internal
