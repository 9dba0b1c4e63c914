#include "client/bench_options.h"

#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/flag_table.h"

namespace squat::bench {
namespace {

using Flag = flags::FlagSpec<BenchOptions>;
using flags::BadValue;

// "MIN,MAX" or "N" (both ends N); both >= minimum and MIN <= MAX.
flags::Setter<BenchOptions> Range(const char* flag, int64_t minimum, IntRange BenchOptions::*field) {
  return [flag, minimum, field](BenchOptions* o, absl::string_view v) {
    const std::vector<absl::string_view> parts = absl::StrSplit(v, ',');
    IntRange range;
    const bool parsed =
        (parts.size() == 1 || parts.size() == 2) &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(parts.front()), &range.min) &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(parts.back()), &range.max);
    if (!parsed || range.min < minimum || range.min > range.max) {
      return BadValue(flag, v, absl::StrCat("MIN,MAX with ", minimum, " <= MIN <= MAX"));
    }
    o->*field = range;
    return absl::OkStatus();
  };
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> flags = [] {
    std::vector<Flag> table = {
      {"address", false, "server host:port (default 127.0.0.1:50051)",
       flags::String(&BenchOptions::address)},
      {"concurrency", false, "streams in flight at most (default 8)",
       flags::IntAtLeast("concurrency", 1, &BenchOptions::concurrency)},
      {"requests", false, "requests to send in all (default 100)",
       flags::IntAtLeast("requests", 1, &BenchOptions::requests)},
      {"rate", false,
       "requests/s with Poisson arrivals, still capped by --concurrency; 0 = closed loop "
       "(default 0)",
       flags::RealIn("rate", 0, std::nullopt, &BenchOptions::rate)},
      {"prompt-tokens", false, "MIN,MAX prompt length in tokens, uniform (default 16,64)",
       Range("prompt-tokens", 1, &BenchOptions::prompt_tokens)},
      {"max-tokens", false, "MIN,MAX max_tokens per request, uniform (default 16,64)",
       Range("max-tokens", 1, &BenchOptions::max_tokens)},
      {"prompt-source", false,
       "ids: random token ids of exactly the drawn length (default); words: random words, "
       "about one token each, sent as text",
       [](BenchOptions* o, absl::string_view v) {
         if (v == "ids") {
           o->prompt_source = PromptSource::kTokenIds;
         } else if (v == "words") {
           o->prompt_source = PromptSource::kWords;
         } else {
           return BadValue("prompt-source", v, "ids or words");
         }
         return absl::OkStatus();
       }},
      {"cancel-fraction", false,
       "share of requests the client cancels after a random number of tokens (default 0)",
       flags::RealIn("cancel-fraction", 0, 1.0, &BenchOptions::cancel_fraction)},
      {"kv-method", false,
       "KV-cache format(s), comma list; each request picks one at random (default: the "
       "server's)",
       [](BenchOptions* o, absl::string_view v) {
         o->kv_methods.clear();
         for (absl::string_view piece : absl::StrSplit(v, ',', absl::SkipEmpty())) {
           o->kv_methods.emplace_back(absl::StripAsciiWhitespace(piece));
         }
         return absl::OkStatus();
       }},
      {"k-bits", false, "key bits of the KV format (0: server default)", flags::IntAtLeast("k-bits", 0, &BenchOptions::k_bits)},
      {"v-bits", false, "value bits of the KV format (0: server default)", flags::IntAtLeast("v-bits", 0, &BenchOptions::v_bits)},
      {"temperature", false, "sampling temperature, 0 = greedy (default 1.0)",
       flags::RealIn("temperature", 0, std::nullopt, &BenchOptions::temperature)},
      {"ignore-eos", true, "generate max_tokens regardless of EOS (default true)",
       flags::Bool("ignore-eos", &BenchOptions::ignore_eos)},
      {"seed", false, "seed of the workload (prompts, lengths, cancellations, sampling)",
       [](BenchOptions* o, absl::string_view v) {
         if (!absl::SimpleAtoi(v, &o->seed)) return BadValue("seed", v, "a non-negative integer");
         return absl::OkStatus();
       }},
      {"timeout-s", false, "deadline of each request in seconds (default: none)",
       flags::RealIn("timeout-s", 0, std::nullopt, &BenchOptions::timeout_s)},
      {"json", false, "write the results as JSON to FILE ('-': stdout)", flags::String(&BenchOptions::json_path)},
      {"json-requests", true, "include every request's record (timings, tokens, outcome) in the JSON",
       flags::Bool("json-requests", &BenchOptions::json_requests)},
      {"allow-errors", true, "exit 0 even if requests ended with unexpected errors",
       flags::Bool("allow-errors", &BenchOptions::allow_errors)},
      {"quiet", true, "print no table", flags::Bool("quiet", &BenchOptions::quiet)},
      {"help", true, "show this help", flags::Bool("help", &BenchOptions::help)},
    };
    flags::AppendPartFlags(client::SecurityFlags(), &BenchOptions::security, &table);
    return table;
  }();
  return flags;
}

}  // namespace

absl::StatusOr<BenchOptions> ParseBenchArgs(int argc, const char* const* argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "-h") {
      options.help = true;
      continue;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    if (absl::Status status = flags::ApplyFlag(Flags(), arg.substr(2), argc, argv, &i, &options); !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = client::ValidateChannelSecurity(options.security); !status.ok()) return status;
  return options;
}

std::string BenchUsageText() {
  std::string text =
      "usage: squat-bench [flags]\n"
      "\n"
      "Load generator for squat-server: sends --requests GenerateStream calls, at most\n"
      "--concurrency at a time, and reports TTFT, inter-token latency, end-to-end latency\n"
      "percentiles, throughput and outcome counts.\n"
      "\n"
      "flags:\n";
  absl::StrAppend(&text, flags::FlagHelp(Flags()));
  absl::StrAppend(&text,
                  "\nExit status: 0 when every request ended OK or by the client's own cancellation\n"
                  "(or --allow-errors), 1 otherwise or when the server cannot be reached, 2 on usage\n"
                  "errors.\n");
  return text;
}

}  // namespace squat::bench
