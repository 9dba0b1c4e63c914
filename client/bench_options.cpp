#include "client/bench_options.h"

#include <cmath>
#include <functional>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace squat::bench {
namespace {

using Setter = std::function<absl::Status(BenchOptions*, absl::string_view)>;

struct FlagSpec {
  const char* name;
  bool is_bool;  // takes no value (or =true / =false)
  const char* help;
  Setter set;
};

absl::Status BadValue(absl::string_view flag, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", value, "' is not ", want));
}

Setter Count(const char* flag, int64_t minimum, int64_t BenchOptions::*field) {
  return [flag, minimum, field](BenchOptions* o, absl::string_view v) {
    int64_t parsed;
    if (!absl::SimpleAtoi(v, &parsed) || parsed < minimum) {
      return BadValue(flag, v, absl::StrCat("an integer >= ", minimum));
    }
    o->*field = parsed;
    return absl::OkStatus();
  };
}

Setter Bits(const char* flag, uint32_t BenchOptions::*field) {
  return [flag, field](BenchOptions* o, absl::string_view v) {
    uint32_t parsed;
    if (!absl::SimpleAtoi(v, &parsed)) return BadValue(flag, v, "a non-negative integer");
    o->*field = parsed;
    return absl::OkStatus();
  };
}

// A finite number >= minimum (and <= maximum when given).
Setter Real(const char* flag, double minimum, std::optional<double> maximum,
            double BenchOptions::*field) {
  return [=](BenchOptions* o, absl::string_view v) {
    double parsed;
    if (!absl::SimpleAtod(v, &parsed) || !std::isfinite(parsed) || parsed < minimum ||
        (maximum.has_value() && parsed > *maximum)) {
      return BadValue(flag, v,
                      maximum.has_value() ? absl::StrCat("a number in [", minimum, ", ", *maximum, "]")
                                          : absl::StrCat("a number >= ", minimum));
    }
    o->*field = parsed;
    return absl::OkStatus();
  };
}

absl::StatusOr<bool> ParseBool(const char* flag, absl::string_view v) {
  const std::string lower = absl::AsciiStrToLower(v);
  if (lower.empty() || lower == "true" || lower == "1" || lower == "yes") return true;
  if (lower == "false" || lower == "0" || lower == "no") return false;
  return BadValue(flag, v, "true or false");
}

Setter Bool(const char* flag, bool BenchOptions::*field) {
  return [flag, field](BenchOptions* o, absl::string_view v) {
    absl::StatusOr<bool> parsed = ParseBool(flag, v);
    if (!parsed.ok()) return parsed.status();
    o->*field = *parsed;
    return absl::OkStatus();
  };
}

Setter String(std::string BenchOptions::*field) {
  return [field](BenchOptions* o, absl::string_view v) {
    o->*field = std::string(v);
    return absl::OkStatus();
  };
}

// "MIN,MAX" or "N" (both ends N); both >= minimum and MIN <= MAX.
Setter Range(const char* flag, int64_t minimum, IntRange BenchOptions::*field) {
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

const std::vector<FlagSpec>& Flags() {
  static const std::vector<FlagSpec> flags = [] {
    std::vector<FlagSpec> table = {
      {"address", false, "server host:port (default 127.0.0.1:50051)",
       String(&BenchOptions::address)},
      {"concurrency", false, "streams in flight at most (default 8)",
       Count("concurrency", 1, &BenchOptions::concurrency)},
      {"requests", false, "requests to send in all (default 100)",
       Count("requests", 1, &BenchOptions::requests)},
      {"rate", false,
       "requests/s with Poisson arrivals, still capped by --concurrency; 0 = closed loop "
       "(default 0)",
       Real("rate", 0, std::nullopt, &BenchOptions::rate)},
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
       Real("cancel-fraction", 0, 1.0, &BenchOptions::cancel_fraction)},
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
      {"k-bits", false, "key bits of the KV format (0: server default)", Bits("k-bits", &BenchOptions::k_bits)},
      {"v-bits", false, "value bits of the KV format (0: server default)", Bits("v-bits", &BenchOptions::v_bits)},
      {"temperature", false, "sampling temperature, 0 = greedy (default 1.0)",
       [](BenchOptions* o, absl::string_view v) {
         float parsed;
         if (!absl::SimpleAtof(v, &parsed) || !std::isfinite(parsed) || parsed < 0) {
           return BadValue("temperature", v, "a number >= 0");
         }
         o->temperature = parsed;
         return absl::OkStatus();
       }},
      {"ignore-eos", true, "generate max_tokens regardless of EOS (default true)",
       Bool("ignore-eos", &BenchOptions::ignore_eos)},
      {"seed", false, "seed of the workload (prompts, lengths, cancellations, sampling)",
       [](BenchOptions* o, absl::string_view v) {
         if (!absl::SimpleAtoi(v, &o->seed)) return BadValue("seed", v, "a non-negative integer");
         return absl::OkStatus();
       }},
      {"timeout-s", false, "deadline of each request in seconds (default: none)",
       Real("timeout-s", 0, std::nullopt, &BenchOptions::timeout_s)},
      {"json", false, "write the results as JSON to FILE ('-': stdout)", String(&BenchOptions::json_path)},
      {"json-requests", true, "include every request's record (timings, tokens, outcome) in the JSON",
       Bool("json-requests", &BenchOptions::json_requests)},
      {"allow-errors", true, "exit 0 even if requests ended with unexpected errors",
       Bool("allow-errors", &BenchOptions::allow_errors)},
      {"quiet", true, "print no table", Bool("quiet", &BenchOptions::quiet)},
      {"help", true, "show this help", Bool("help", &BenchOptions::help)},
    };
    for (const client::SecurityFlag& flag : client::SecurityFlags()) {
      table.push_back({flag.name, flag.is_bool, flag.help, [set = flag.set](BenchOptions* o, absl::string_view v) {
                         return set(&o->security, v);
                       }});
    }
    return table;
  }();
  return flags;
}

const FlagSpec* FindFlag(absl::string_view name) {
  for (const FlagSpec& flag : Flags()) {
    if (name == flag.name) return &flag;
  }
  return nullptr;
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
    absl::string_view name = arg.substr(2);
    std::optional<absl::string_view> value;
    if (const size_t eq = name.find('='); eq != absl::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    std::string normalized(name);
    for (char& ch : normalized) {
      if (ch == '_') ch = '-';
    }
    const FlagSpec* flag = FindFlag(normalized);
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag '", arg, "'"));
    if (!value.has_value()) {
      if (flag->is_bool) {
        value = "";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", flag->name, " needs a value"));
      }
    }
    if (absl::Status status = flag->set(&options, *value); !status.ok()) return status;
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
  for (const FlagSpec& flag : Flags()) {
    absl::StrAppend(&text, "  --", flag.name, flag.is_bool ? "" : "=VALUE", "\n      ", flag.help, "\n");
  }
  absl::StrAppend(&text,
                  "\nExit status: 0 when every request ended OK or by the client's own cancellation\n"
                  "(or --allow-errors), 1 otherwise or when the server cannot be reached, 2 on usage\n"
                  "errors.\n");
  return text;
}

}  // namespace squat::bench
