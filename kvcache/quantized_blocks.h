// Quantize / dequantize [H_kv, n, d] blocks of keys and values into the packed page format
// (spec 2 and 6), calling the math of squat_math.h once per KV head. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "kvcache/kv_cache.h"
#include "kvcache/paged_stores.h"

namespace squat::kv {

// Keys [H_kv, n, d] (n a multiple of G), quantized per head in float32 with fp16 metadata;
// compensation[h] are head h's C_i (float32), or empty for KIVI.
PackedKeys QuantizeKeyBlock(const at::Tensor& keys, const KvFormat& format,
                            const std::vector<std::vector<at::Tensor>>& compensation);
// [H_kv, n, d] float32.
at::Tensor DequantizeKeyBlock(const PackedKeys& keys, const KvFormat& format);

// Values [H_kv, n, d], per token in float32 with fp16 metadata.
PackedValues QuantizeValueTokens(const at::Tensor& values, const KvFormat& format);
// [H_kv, n, d] float32.
at::Tensor DequantizeValueTokens(const PackedValues& values, const KvFormat& format);

}  // namespace squat::kv
