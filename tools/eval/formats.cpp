#include "tools/eval/formats.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kvcache/standalone_cache.h"

namespace squat::eval {
namespace {

int64_t BlockSize(const EvalOptions& o, int64_t head_dim) { return o.block_size > 0 ? o.block_size : head_dim / 2; }

}  // namespace

absl::StatusOr<std::vector<EvalFormat>> BuildFormats(const EvalOptions& options, int64_t head_dim) {
  std::vector<EvalFormat> formats = {{"fp16", kv::FullPrecisionFormat()}};
  for (const std::string& name : options.methods) {
    auto method = kv::ParseKvMethod(name);
    if (!method.ok()) return method.status();
    if (*method == kv::KvMethod::kFp16) continue;  // always present as the reference
    for (int bits : options.bits) {
      kv::KvFormat f;
      f.method = *method;
      f.k_bits = bits;
      f.v_bits = options.v_bits > 0 ? options.v_bits : bits;
      f.group_size = options.group_size;
      f.residual_length = options.residual_length;
      f.block_size = BlockSize(options, head_dim);
      f.subspace_dim = options.subspace_dim;
      f.lambda = options.lambda;
      f.shared_subspace = false;  // the engine default: each sequence's subspace from its own prompt
      if (absl::Status s = kv::ValidateKvFormat(f, head_dim); !s.ok()) return s;
      const std::string label = f.v_bits == f.k_bits
                                    ? absl::StrCat(kv::KvMethodName(*method), bits)
                                    : absl::StrCat(kv::KvMethodName(*method), "-k", f.k_bits, "v", f.v_bits);
      if (std::any_of(formats.begin(), formats.end(), [&](const EvalFormat& e) { return e.label == label; })) {
        continue;  // "squat" and "squat-pre" name one method
      }
      formats.push_back({label, f});
    }
  }
  return formats;
}

std::string DescribeSettings(const EvalOptions& o, int64_t head_dim) {
  return absl::StrCat("G ", o.group_size, ", R ", o.residual_length, ", g ", BlockSize(o, head_dim), ", r ",
                      o.subspace_dim, " (capped at d = ", head_dim, ": ", std::min(o.subspace_dim, head_dim),
                      "), lambda ", o.lambda, ", per-sequence subspace from post-RoPE prompt queries");
}

}  // namespace squat::eval
