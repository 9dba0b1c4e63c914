#include "kvcache/quantized_blocks.h"

#include "kvcache/squat_math.h"

namespace squat::kv {

PackedKeys QuantizeKeyBlock(const at::Tensor& keys, const KvFormat& format,
                            const std::vector<std::vector<at::Tensor>>& compensation) {
  const int64_t heads = keys.size(0);
  static const std::vector<at::Tensor> kNoCompensation;
  std::vector<at::Tensor> codes, scale, min;
  for (int64_t h = 0; h < heads; ++h) {
    const QuantizedTensor q =
        QuantizeKeys(keys[h].to(at::kFloat).contiguous(), format.k_bits, format.group_size, format.block_size,
                     compensation.empty() ? kNoCompensation : compensation[h], at::kHalf);
    // [n, d] -> [d, n]: the pages pack keys along tokens.
    codes.push_back(q.codes.t());
    scale.push_back(q.scale.t());
    min.push_back(q.min.t());
  }
  return {PackLastDim(at::stack(codes).contiguous(), format.k_bits), at::stack(scale), at::stack(min)};
}

at::Tensor DequantizeKeyBlock(const PackedKeys& keys, const KvFormat& format) {
  at::Tensor codes = UnpackLastDim(keys.words, format.k_bits);  // [H, d, n]
  std::vector<at::Tensor> heads;
  for (int64_t h = 0; h < codes.size(0); ++h) {
    const QuantizedTensor q{codes[h].t().contiguous(), keys.scale[h].t().contiguous(),
                            keys.min[h].t().contiguous()};
    heads.push_back(DequantizeKeys(q, format.group_size, at::kFloat));
  }
  return at::stack(heads);
}

PackedValues QuantizeValueTokens(const at::Tensor& values, const KvFormat& format) {
  const int64_t heads = values.size(0), tokens = values.size(1), dim = values.size(2);
  // Per-token quantization: heads and tokens can share one call.
  const QuantizedTensor q = QuantizeValues(values.to(at::kFloat).reshape({heads * tokens, dim}).contiguous(),
                                           format.v_bits, format.group_size, at::kHalf);
  const int64_t groups = dim / format.group_size;
  return {PackLastDim(q.codes.view({heads, tokens, dim}), format.v_bits), q.scale.view({heads, tokens, groups}),
          q.min.view({heads, tokens, groups})};
}

at::Tensor DequantizeValueTokens(const PackedValues& values, const KvFormat& format) {
  at::Tensor codes = UnpackLastDim(values.words, format.v_bits);  // [H, n, d]
  const int64_t heads = codes.size(0), tokens = codes.size(1), dim = codes.size(2);
  const QuantizedTensor q{codes.reshape({heads * tokens, dim}).contiguous(),
                          values.scale.reshape({heads * tokens, -1}).contiguous(),
                          values.min.reshape({heads * tokens, -1}).contiguous()};
  return DequantizeValues(q, format.group_size, at::kFloat).view({heads, tokens, dim});
}

}  // namespace squat::kv
