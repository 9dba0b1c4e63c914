#include "tools/bench/throughput_options.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/flag_table.h"

namespace squat::bench {
namespace {

using Flag = flags::FlagSpec<ThroughputOptions>;
using flags::BadValue;

// A comma list of positive integers, replacing the field's list.
flags::Setter<ThroughputOptions> PositiveList(const char* flag, std::vector<int64_t> ThroughputOptions::*field) {
  return [flag, field](ThroughputOptions* o, absl::string_view value) {
    std::vector<int64_t> out;
    for (absl::string_view piece : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      int64_t n;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(piece), &n) || n <= 0) {
        return BadValue(flag, value, "a comma list of positive integers");
      }
      out.push_back(n);
    }
    if (out.empty()) return BadValue(flag, value, "a comma list of positive integers");
    o->*field = std::move(out);
    return absl::OkStatus();
  };
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> flags = {
      {"model", false, "checkpoint directory (required)", flags::String(&ThroughputOptions::model_dir)},
      {"device", false, "cpu or cuda[:N] (default cpu)", flags::String(&ThroughputOptions::device)},
      {"dtype", false, "weight dtype: auto, float32, float16, bfloat16 (default auto)",
       flags::String(&ThroughputOptions::dtype)},
      {"format", false, "KV format: fp16, kivi-2, squat-2, squat-post-4, squat-k4v2, ... (default squat-2)",
       [](ThroughputOptions* o, absl::string_view v) {
         auto parsed = ParseFormatChoice(std::string(v));
         if (!parsed.ok()) return parsed.status();
         o->format = *parsed;
         return absl::OkStatus();
       }},
      {"kv-pool-mib", false, "KV page pool size in MiB (default: the engine's)",
       flags::IntAtLeast("kv-pool-mib", 1, &ThroughputOptions::kv_pool_mib)},
      {"gpu-memory-utilization", false,
       "size the pool to this share of the GPU (only where the engine has the option; see --capabilities)",
       flags::RealIn("gpu-memory-utilization", 0.01, 1.0, &ThroughputOptions::gpu_memory_utilization)},
      {"max-num-batched-tokens", false, "engine: tokens per step (default: the engine's)",
       flags::IntAtLeast("max-num-batched-tokens", 0, &ThroughputOptions::max_num_batched_tokens)},
      {"max-prefill-chunk", false, "engine: prompt tokens per sequence per step (default: the engine's)",
       flags::IntAtLeast("max-prefill-chunk", 0, &ThroughputOptions::max_prefill_chunk)},
      {"max-model-len", false, "engine: longest sequence (default: the model's)",
       flags::IntAtLeast("max-model-len", 0, &ThroughputOptions::max_model_len)},
      {"max-num-seqs", false,
       "engine: running sequences at most (default: the largest batch; 2048 when --batches has 'max')",
       flags::IntAtLeast("max-num-seqs", 1, &ThroughputOptions::max_num_seqs)},
      {"batches", false, "batch sizes to sweep, e.g. 1,8,32,max ('max': the most the pool is estimated to hold)",
       [](ThroughputOptions* o, absl::string_view v) {
         o->batches.clear();
         for (absl::string_view piece : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
           piece = absl::StripAsciiWhitespace(piece);
           BatchChoice choice;
           if (piece == "max") {
             choice.max = true;
           } else if (!absl::SimpleAtoi(piece, &choice.count) || choice.count <= 0) {
             return BadValue("batches", v, "a comma list of positive integers or 'max'");
           }
           o->batches.push_back(choice);
         }
         if (o->batches.empty()) return BadValue("batches", v, "a non-empty list");
         return absl::OkStatus();
       }},
      {"prompt-tokens", false, "prompt length(s), comma list, swept outermost (default 160)",
       PositiveList("prompt-tokens", &ThroughputOptions::prompt_tokens)},
      {"gen-tokens", false, "tokens generated per sequence, EOS ignored (default 338)",
       flags::IntAtLeast("gen-tokens", 1, &ThroughputOptions::gen_tokens)},
      {"steady-window", false,
       "generate more tokens when needed so that every sequence decodes about this many steps after the "
       "last prompt is in (0: exactly --gen-tokens)",
       flags::IntAtLeast("steady-window", 0, &ThroughputOptions::steady_window)},
      {"capacity-contexts", false,
       "sequence lengths for the capacity table (default: prompt + generated of each prompt length)",
       PositiveList("capacity-contexts", &ThroughputOptions::capacity_contexts)},
      {"seed", false, "seed of the random prompts (default 1)",
       [](ThroughputOptions* o, absl::string_view v) {
         if (!absl::SimpleAtoi(v, &o->seed)) return BadValue("seed", v, "a non-negative integer");
         return absl::OkStatus();
       }},
      {"budget-s", false, "seconds for the whole run, load included; points predicted to overrun are skipped, "
                          "a running point past it is cancelled (0: none)",
       flags::RealIn("budget-s", 0, 1e7, &ThroughputOptions::budget_s)},
      {"fill-budget", true, "when the next batch would not fit the budget, run the largest one that does",
       flags::Bool("fill-budget", &ThroughputOptions::fill_budget)},
      {"max-preemption-ratio", false, "preemptions per sequence above which the sweep stops (default 0.05)",
       flags::RealIn("max-preemption-ratio", 0, 1e6, &ThroughputOptions::max_preemption_ratio)},
      {"warmup", true, "one short untimed request before the sweep (default true)",
       flags::Bool("warmup", &ThroughputOptions::warmup)},
      {"describe-only", true, "load the model, write the description and capacity table, run nothing",
       flags::Bool("describe-only", &ThroughputOptions::describe_only)},
      {"json", false, "write the results here (rewritten after every point; '-': stdout at the end)",
       flags::String(&ThroughputOptions::json_path)},
      {"label", false, "free text copied into the JSON", flags::String(&ThroughputOptions::label)},
      {"capabilities", true, "print the engine options this build supports as JSON and exit",
       flags::Bool("capabilities", &ThroughputOptions::capabilities)},
      {"help", true, "this text", flags::Bool("help", &ThroughputOptions::help)},
  };
  return flags;
}

}  // namespace

absl::StatusOr<FormatChoice> ParseFormatChoice(const std::string& text) {
  FormatChoice choice;
  choice.name = text;
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "fp16") {
    choice.method = "fp16";
    return choice;
  }
  const size_t dash = lower.rfind('-');
  if (dash == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--format: '", text, "' needs bits, e.g. squat-2, kivi-4, squat-k4v2 (or fp16)"));
  }
  choice.method = lower.substr(0, dash);
  const std::string bits = lower.substr(dash + 1);
  int32_t k = 0, v = 0;
  bool ok = false;
  if (absl::StartsWith(bits, "k") && bits.find('v') != std::string::npos) {
    const size_t vpos = bits.find('v');
    ok = absl::SimpleAtoi(bits.substr(1, vpos - 1), &k) && absl::SimpleAtoi(bits.substr(vpos + 1), &v);
  } else {
    ok = absl::SimpleAtoi(bits, &k);
    v = k;
  }
  if (!ok || k <= 0 || v <= 0 || choice.method.empty() || choice.method == "fp16") {
    return absl::InvalidArgumentError(absl::StrCat("--format: cannot read '", text, "' (e.g. squat-2, squat-k4v2)"));
  }
  choice.k_bits = k;
  choice.v_bits = v;
  return choice;
}

absl::StatusOr<ThroughputOptions> ParseThroughputArgs(int argc, const char* const* argv) {
  ThroughputOptions options;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "-h") {
      options.help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--") || arg.size() < 3) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    if (absl::Status s = flags::ApplyFlag(Flags(), arg.substr(2), argc, argv, &i, &options); !s.ok()) return s;
  }
  if (options.help || options.capabilities) return options;
  if (options.model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
  if (!options.describe_only && options.batches.empty()) {
    return absl::InvalidArgumentError("--batches is required (or --describe-only)");
  }
  return options;
}

std::string ThroughputUsage() {
  std::string text =
      "usage: squat-throughput --model DIR --batches 1,8,32,max [flags]\n"
      "\n"
      "Offline throughput of the engine (no server): for each prompt length and batch size, submits\n"
      "`batch` requests of random token ids at once (greedy, EOS ignored, exactly --gen-tokens\n"
      "each), waits for all, and reports wall time, throughput, prefill/decode split, decode step\n"
      "times, preemptions and memory. One engine (one KV format) per process.\n"
      "\n"
      "flags:\n";
  absl::StrAppend(&text, flags::FlagHelp(Flags(), " VALUE"));
  absl::StrAppend(&text, "\nExit status: 0 when the run finished (points may be skipped or stopped; see the JSON),\n"
                         "1 when the engine could not be created, 2 on usage errors.\n");
  return text;
}

}  // namespace squat::bench
