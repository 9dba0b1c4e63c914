// Number helpers for the checkpoint generator: a counter-based random stream (so any chunk of a
// tensor can be generated on any thread and still give the same bytes) and float -> fp16/bf16
// conversion with round-to-nearest-even. Header-only so tests can check them directly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace squat::checkpoint {

inline uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// float -> IEEE binary16, round to nearest, ties to even; overflow -> inf; NaN stays NaN.
inline uint16_t FloatToHalf(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf or NaN
    return sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u);
  }
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds past the largest half
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent >= -14) {  // normal half: drop 13 mantissa bits
    const uint32_t mantissa = magnitude & 0x7FFFFFu;
    uint32_t half = (static_cast<uint32_t>(exponent + 15) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry moves the exponent up
    return sign | static_cast<uint16_t>(half);
  }
  if (exponent < -25) return sign;  // below half the smallest subnormal: rounds to zero
  // Subnormal half: units of 2^-24.
  const uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
  const int shift = -exponent - 1;  // 14..24
  uint32_t half = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t midpoint = 1u << (shift - 1);
  if (rest > midpoint || (rest == midpoint && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

// float -> bfloat16, round to nearest, ties to even; NaN stays a quiet NaN.
inline uint16_t FloatToBFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// splitmix64's output function: a strong 64-bit mixer.
inline uint64_t Mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t HashName(std::string_view name) {  // FNV-1a
  uint64_t hash = 0xCBF29CE484222325ull;
  for (char c : name) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001B3ull;
  }
  return hash;
}

// The random stream of one tensor: element i depends only on (seed, tensor name, i).
class NormalStream {
 public:
  NormalStream(uint64_t seed, std::string_view tensor_name)
      : key_(Mix64(seed ^ Mix64(HashName(tensor_name)))) {}

  // Standard normal pair number `pair` (elements 2*pair and 2*pair+1), by Box-Muller.
  void Pair(uint64_t pair, float* first, float* second) const {
    const uint64_t bits = Mix64(key_ + (pair + 1) * 0x9E3779B97F4A7C15ull);
    // 24-bit uniforms; u1 in (0, 1) so the log is finite.
    const float u1 = (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>((bits >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float angle = 6.28318530717958647692f * u2;
    *first = radius * std::cos(angle);
    *second = radius * std::sin(angle);
  }

  // Fills out[0, count) with elements [start, start + count) of the stream.
  void Fill(uint64_t start, uint64_t count, float* out) const {
    uint64_t i = start;
    const uint64_t end = start + count;
    float a, b;
    if (i < end && (i & 1u)) {  // odd start: second half of a pair
      Pair(i / 2, &a, &b);
      *out++ = b;
      ++i;
    }
    for (; i + 1 < end; i += 2) {
      Pair(i / 2, &out[0], &out[1]);
      out += 2;
    }
    if (i < end) {
      Pair(i / 2, &a, &b);
      *out = a;
    }
  }

 private:
  uint64_t key_;
};

}  // namespace squat::checkpoint
