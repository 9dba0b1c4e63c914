#include "kvcache/format_catalogue.h"

#include "absl/strings/str_cat.h"
#include "kvcache/page_geometry.h"

namespace squat::kv {

std::string KvFormatLabel(const KvFormat& format) {
  if (!IsQuantized(format.method)) return KvMethodName(format.method);
  return absl::StrCat(KvMethodName(format.method), "-k", format.k_bits, "v", format.v_bits);
}

absl::StatusOr<FormatCatalogue> FormatCatalogue::Create(const FormatDefaults& defaults, int64_t head_dim) {
  absl::StatusOr<KvMethod> method = ParseKvMethod(defaults.method);
  if (!method.ok()) return method.status();
  FormatCatalogue catalogue(defaults, head_dim, KvFormat{});
  catalogue.default_format_ = catalogue.Make(*method, defaults.k_bits, defaults.v_bits);
  if (absl::Status s = ValidateKvFormat(catalogue.default_format_, head_dim); !s.ok()) return s;
  return catalogue;
}

KvFormat FormatCatalogue::Make(KvMethod method, int k_bits, int v_bits) const {
  KvFormat f;
  f.method = method;
  f.k_bits = IsQuantized(method) ? k_bits : 16;
  f.v_bits = IsQuantized(method) ? v_bits : 16;
  f.group_size = defaults_.group_size;
  f.residual_length = defaults_.residual_length;
  f.block_size = defaults_.block_size > 0 ? defaults_.block_size : head_dim_ / 2;
  f.subspace_dim = defaults_.subspace_dim;
  f.lambda = defaults_.lambda;
  f.shared_subspace = defaults_.shared_subspace;
  return f;
}

ResolvedFormat FormatCatalogue::Describe(const KvFormat& format, const KvCacheManager& manager) const {
  ResolvedFormat r;
  r.format = format;
  r.label = KvFormatLabel(format);
  r.capacity_tokens = manager.CapacityTokens(format);
  r.prompt_capacity_tokens = manager.PromptCapacityTokens(format);
  r.is_default = format.method == default_format_.method && format.k_bits == default_format_.k_bits &&
                 format.v_bits == default_format_.v_bits;
  return r;
}

absl::StatusOr<ResolvedFormat> FormatCatalogue::Resolve(const FormatRequest& request,
                                                        const KvCacheManager& manager) const {
  KvMethod method = default_format_.method;
  if (!request.method.empty()) {
    absl::StatusOr<KvMethod> parsed = ParseKvMethod(request.method);
    if (!parsed.ok()) return parsed.status();
    method = *parsed;
  }
  if (!IsQuantized(method) && (request.k_bits != 0 || request.v_bits != 0)) {
    return absl::InvalidArgumentError(
        "k_bits/v_bits apply to quantized KV methods only; 'fp16' stores keys and values in full precision");
  }
  // Bits the request leaves unset come from the default (of any method: K4V2 stays K4V2).
  const KvFormat format = Make(method, request.k_bits != 0 ? request.k_bits : defaults_.k_bits,
                               request.v_bits != 0 ? request.v_bits : defaults_.v_bits);
  if (absl::Status s = ValidateKvFormat(format, head_dim_); !s.ok()) return s;
  ResolvedFormat resolved = Describe(format, manager);
  if (resolved.capacity_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV format '", resolved.label,
                                                   "' does not fit this server's page size"));
  }
  return resolved;
}

std::vector<ResolvedFormat> FormatCatalogue::Listed(const KvCacheManager& manager) const {
  std::vector<KvFormat> candidates = {Make(KvMethod::kFp16, 16, 16)};
  for (KvMethod m : {KvMethod::kKivi, KvMethod::kSquatPre, KvMethod::kSquatPost}) {
    for (int bits : {2, 4}) candidates.push_back(Make(m, bits, bits));
  }
  candidates.push_back(default_format_);
  std::vector<ResolvedFormat> listed;
  for (const KvFormat& f : candidates) {
    bool seen = false;
    for (const ResolvedFormat& r : listed) seen |= r.label == KvFormatLabel(f);
    if (seen || !ValidateKvFormat(f, head_dim_).ok()) continue;
    ResolvedFormat r = Describe(f, manager);
    if (r.capacity_tokens > 0) listed.push_back(std::move(r));
  }
  return listed;
}

}  // namespace squat::kv
