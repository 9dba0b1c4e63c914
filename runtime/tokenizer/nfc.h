// Unicode canonical normalization (NFC / NFD) for the tokenizer.json normalizers
// (private to squat_tokenizer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace squat::tokenizer_internal {

// Both take and return valid UTF-8.
std::string ToNfc(std::string_view text);
std::string ToNfd(std::string_view text);

// Tables generated from the Unicode Character Database (tokenizer_nfc_data.cpp), each sorted.
namespace nfc_data {
struct CombiningClass {
  char32_t code_point;
  uint8_t combining_class;  // non-zero; absent code points have class 0
};
struct Decomposition {
  char32_t code_point;
  uint16_t offset;  // full canonical decomposition: kDecompositionChars[offset, offset + length)
  uint8_t length;
};
struct Composition {
  char32_t first, second, composite;  // primary composites only (exclusions removed)
};
extern const CombiningClass kCombiningClasses[];
extern const size_t kCombiningClassCount;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;
extern const char32_t kDecompositionChars[];
extern const Composition kCompositions[];
extern const size_t kCompositionCount;
}  // namespace nfc_data

}  // namespace squat::tokenizer_internal
