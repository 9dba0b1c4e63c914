#include "tools/eval/eval_options.h"

#include <functional>
#include <map>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace squat::eval {
namespace {

absl::Status Bad(const std::string& flag, const std::string& value, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, " needs ", what, ", got '", value, "'"));
}

template <typename T>
absl::Status ParseNumber(const std::string& flag, const std::string& value, T* out) {
  if constexpr (std::is_same_v<T, double>) {
    if (!absl::SimpleAtod(value, out)) return Bad(flag, value, "a number");
  } else {
    if (!absl::SimpleAtoi(value, out)) return Bad(flag, value, "an integer");
  }
  return absl::OkStatus();
}

// "a,b,c"; "none" gives an empty list.
template <typename T>
absl::Status ParseList(const std::string& flag, const std::string& value, std::vector<T>* out) {
  out->clear();
  if (value == "none") return absl::OkStatus();
  for (absl::string_view piece : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    T item{};
    if constexpr (std::is_same_v<T, std::string>) {
      item = std::string(piece);
    } else if (absl::Status s = ParseNumber(flag, std::string(piece), &item); !s.ok()) {
      return Bad(flag, value, "a comma-separated list of numbers");
    }
    out->push_back(item);
  }
  if (out->empty()) return Bad(flag, value, "a non-empty comma-separated list (or 'none')");
  return absl::OkStatus();
}

absl::Status Validate(const EvalOptions& o) {
  if (o.model_dir.empty() || o.text_path.empty()) {
    return absl::InvalidArgumentError("--model and --text are required");
  }
  if (o.contexts.empty() && o.needle_contexts.empty()) {
    return absl::InvalidArgumentError("nothing to do: --contexts and --needle-contexts are both 'none'");
  }
  for (int64_t c : o.contexts) {
    if (c < 8) return absl::InvalidArgumentError(absl::StrCat("--contexts: each context must be >= 8, got ", c));
  }
  for (int64_t c : o.needle_contexts) {
    if (c < 64) {
      return absl::InvalidArgumentError(absl::StrCat("--needle-contexts: each context must be >= 64, got ", c));
    }
  }
  for (double d : o.needle_depths) {
    if (!(d >= 0.0 && d <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("--needle-depths must lie in [0, 1], got ", d));
    }
  }
  for (int b : o.bits) {
    if (b != 2 && b != 4) return absl::InvalidArgumentError(absl::StrCat("--bits must be 2 or 4, got ", b));
  }
  if (o.v_bits != 0 && o.v_bits != 2 && o.v_bits != 4) {
    return absl::InvalidArgumentError(absl::StrCat("--v-bits must be 2 or 4, got ", o.v_bits));
  }
  if (!(o.prefix_fraction > 0.0 && o.prefix_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--prefix-fraction must lie in (0, 1), got ", o.prefix_fraction));
  }
  for (int64_t n : o.max_windows) {
    if (n < 0) return absl::InvalidArgumentError("--max-windows must be >= 0");
  }
  if (o.max_windows.size() != 1 && o.max_windows.size() != o.contexts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--max-windows needs one value or one per context (",
                                                   o.contexts.size(), "), got ", o.max_windows.size()));
  }
  if (o.needle_trials < 1) return absl::InvalidArgumentError("--needle-trials must be >= 1");
  if (o.lambda < 0) return absl::InvalidArgumentError("--lambda must be >= 0");
  return absl::OkStatus();
}

}  // namespace

std::string EvalUsage() {
  return R"(usage: squat-eval --model DIR --text FILE [options]

Quality of the KV-cache formats against the full-precision cache, through the runtime's own
model and cache code: perplexity of held-out text (each window's first part prefilled, the
rest scored token by token through the decode path), logit and attention-output error vs
fp16, and a needle-in-a-haystack retrieval test.

  --model DIR               Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)
  --text FILE               held-out UTF-8 text
  --device cpu|cuda[:N]     (default cpu)
  --dtype auto|float32|float16|bfloat16   model compute dtype (default auto: float32 on CPU)
  --contexts 512,1024,2048  window lengths in tokens ('none': skip perplexity)
  --methods fp16,kivi,squat,squat-post   formats (fp16 is always run: it is the reference)
  --bits 2,4                key and value bits of the quantized formats
  --v-bits N                value bits of every quantized format instead (e.g. --bits 2 --v-bits 4:
                            K2V4, to see the key quantizers with less value error on top)
  --max-windows N[,N...]    windows per context (one value, or one per context), spread evenly
                            over the text (default 4; 0: all)
  --prefix-fraction F       share of each window prefilled (default 0.5)
  --no-isolated-attention   skip feeding the fp16 run's q/k/v to shadow quantized caches
  --group-size G --residual-length R --block-size g --subspace-dim r --lambda X
                            KV parameters (defaults: the engine's 32, 32, head_dim/2, 60, 1e-3)
  --needle-contexts 512,1024,2048   haystack lengths ('none': skip the needle test)
  --needle-depths 0.1,0.3,0.5,0.7,0.9   needle positions as a share of the haystack
  --needle-trials N         secret numbers per context and depth (default 2)
  --seed N                  needle numbers and haystack offsets (default 1)
  --threads N               CPU threads (default: LibTorch's)
  --json FILE               write every number (per layer too) as JSON
)";
}

int64_t MaxWindowsFor(const EvalOptions& options, size_t index) {
  return options.max_windows.size() == 1 ? options.max_windows[0] : options.max_windows.at(index);
}

absl::StatusOr<EvalOptions> ParseEvalOptions(int argc, const char* const* argv) {
  EvalOptions o;
  using Setter = std::function<absl::Status(const std::string&, const std::string&)>;
  auto text = [](std::string* target) -> Setter {
    return [target](const std::string&, const std::string& v) {
      *target = v;
      return absl::OkStatus();
    };
  };
  auto number = [](auto* target) -> Setter {
    return [target](const std::string& flag, const std::string& v) { return ParseNumber(flag, v, target); };
  };
  auto list = [](auto* target) -> Setter {
    return [target](const std::string& flag, const std::string& v) { return ParseList(flag, v, target); };
  };
  const std::map<std::string, Setter> setters = {
      {"--model", text(&o.model_dir)},
      {"--text", text(&o.text_path)},
      {"--json", text(&o.json_path)},
      {"--device", text(&o.device)},
      {"--dtype", text(&o.dtype)},
      {"--contexts", list(&o.contexts)},
      {"--methods", list(&o.methods)},
      {"--bits", list(&o.bits)},
      {"--v-bits", number(&o.v_bits)},
      {"--max-windows", list(&o.max_windows)},
      {"--prefix-fraction", number(&o.prefix_fraction)},
      {"--group-size", number(&o.group_size)},
      {"--residual-length", number(&o.residual_length)},
      {"--block-size", number(&o.block_size)},
      {"--subspace-dim", number(&o.subspace_dim)},
      {"--lambda", number(&o.lambda)},
      {"--needle-contexts", list(&o.needle_contexts)},
      {"--needle-depths", list(&o.needle_depths)},
      {"--needle-trials", number(&o.needle_trials)},
      {"--seed", number(&o.seed)},
      {"--threads", number(&o.threads)},
  };
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") return absl::NotFoundError(EvalUsage());
    if (flag == "--no-isolated-attention") {
      o.isolated_attention = false;
      continue;
    }
    auto it = setters.find(flag);
    if (it == setters.end()) return absl::InvalidArgumentError("unknown flag " + flag);
    if (i + 1 >= argc) return absl::InvalidArgumentError(flag + " needs a value");
    if (absl::Status s = it->second(flag, argv[++i]); !s.ok()) return s;
  }
  if (absl::Status s = Validate(o); !s.ok()) return s;
  return o;
}

}  // namespace squat::eval
