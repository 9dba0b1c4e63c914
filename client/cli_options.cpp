#include "client/cli_options.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/flag_table.h"

namespace squat::cli {
namespace {

using Flag = flags::FlagSpec<CliOptions>;
using flags::BadValue;
using flags::Setter;

absl::StatusOr<float> ParseFloat(const char* flag, absl::string_view v) {
  float parsed;
  if (!absl::SimpleAtof(v, &parsed) || !std::isfinite(parsed)) return BadValue(flag, v, "a number");
  return parsed;
}

// Any finite number, into a float or an optional float.
template <typename Field>
Setter<CliOptions> Float(const char* flag, Field CliOptions::*field) {
  return [flag, field](CliOptions* o, absl::string_view v) {
    absl::StatusOr<float> parsed = ParseFloat(flag, v);
    if (!parsed.ok()) return parsed.status();
    o->*field = *parsed;
    return absl::OkStatus();
  };
}

// "1,2, 3" -> {1, 2, 3}; appends to *ids.
absl::Status AppendIdList(const char* flag, absl::string_view v, std::vector<int32_t>* ids) {
  for (absl::string_view piece : absl::StrSplit(v, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return BadValue(flag, v, "a comma-separated list of integer token ids");
    }
    ids->push_back(id);
  }
  return absl::OkStatus();
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> flags = [] {
    std::vector<Flag> table = {
      {"address", false, "server host:port (default 127.0.0.1:50051)", flags::String(&CliOptions::address)},
      {"timeout-s", false, "call deadline in seconds (default: none; health: 5)",
       [](CliOptions* o, absl::string_view v) {
         double parsed;
         if (!absl::SimpleAtod(v, &parsed) || !(parsed >= 0) || !std::isfinite(parsed)) {
           return BadValue("timeout-s", v, "a non-negative number of seconds");
         }
         o->timeout_s = parsed;
         return absl::OkStatus();
       }},
      {"json", true, "machine-readable output (proto JSON; one line per chunk for stream)",
       flags::Bool("json", &CliOptions::json)},
      {"help", true, "show this help", flags::Bool("help", &CliOptions::help)},
      {"token-ids", false, "prompt as comma-separated token ids instead of text",
       [](CliOptions* o, absl::string_view v) {
         std::vector<int32_t> ids;
         absl::Status status = AppendIdList("token-ids", v, &ids);
         if (status.ok()) o->token_ids = std::move(ids);
         return status;
       }},
      {"request-id", false, "request id echoed in the server's logs", flags::String(&CliOptions::request_id)},
      {"add-special-tokens", true, "add BOS etc. to a text prompt (default true)",
       flags::Bool("add-special-tokens", &CliOptions::add_special_tokens)},
      {"max-tokens", false, "tokens to generate at most (0: server default)",
       flags::IntAtLeast("max-tokens", 0, &CliOptions::max_tokens)},
      {"temperature", false, "0 = greedy (default 1.0)",
       Float("temperature", &CliOptions::temperature)},
      {"top-k", false, "0 disables", flags::IntAtLeast("top-k", 0, &CliOptions::top_k)},
      {"top-p", false, "nucleus sampling mass (default 1.0 = off)",
       Float("top-p", &CliOptions::top_p)},
      {"min-p", false, "0 disables", Float("min-p", &CliOptions::min_p)},
      {"repetition-penalty", false, "default 1.0 = off",
       Float("repetition-penalty", &CliOptions::repetition_penalty)},
      {"presence-penalty", false, "default 0", Float("presence-penalty", &CliOptions::presence_penalty)},
      {"frequency-penalty", false, "default 0",
       Float("frequency-penalty", &CliOptions::frequency_penalty)},
      {"seed", false, "sampling seed (same seed, same output)",
       [](CliOptions* o, absl::string_view v) {
         uint64_t parsed;
         if (!absl::SimpleAtoi(v, &parsed)) return BadValue("seed", v, "a non-negative integer");
         o->seed = parsed;
         return absl::OkStatus();
       }},
      {"stop", false, "stop string(s); repeatable or a comma list",
       [](CliOptions* o, absl::string_view v) {
         for (absl::string_view piece : absl::StrSplit(v, ',', absl::SkipEmpty())) {
           o->stop.emplace_back(piece);
         }
         return absl::OkStatus();
       }},
      {"stop-token-ids", false, "comma list of token ids that end generation",
       [](CliOptions* o, absl::string_view v) {
         return AppendIdList("stop-token-ids", v, &o->stop_token_ids);
       }},
      {"ignore-eos", true, "keep generating past EOS", flags::Bool("ignore-eos", &CliOptions::ignore_eos)},
      {"logprobs", false, "> 0: return each sampled token's log-probability",
       flags::IntAtLeast("logprobs", 0, &CliOptions::logprobs)},
      {"kv-method", false, "KV-cache format for this request (fp16, kivi, squat, squat-post)",
       flags::String(&CliOptions::kv_method)},
      {"k-bits", false, "key bits for the KV format (0: server default)",
       flags::IntAtLeast("k-bits", 0, &CliOptions::k_bits)},
      {"v-bits", false, "value bits for the KV format (0: server default)",
       flags::IntAtLeast("v-bits", 0, &CliOptions::v_bits)},
      {"cancel-after-tokens", false, "stream: cancel the call after N tokens arrived",
       flags::IntAtLeast("cancel-after-tokens", 0, &CliOptions::cancel_after_tokens)},
      {"service", false, "health: service name to check (default: the whole server)",
       flags::String(&CliOptions::service)},
    };
    flags::AppendPartFlags(client::SecurityFlags(), &CliOptions::security, &table);
    return table;
  }();
  return flags;
}

bool IsCommand(absl::string_view name) {
  return name == "generate" || name == "stream" || name == "tokenize" || name == "info" ||
         name == "health";
}

absl::Status CheckCommandArguments(const CliOptions& o) {
  const std::string& c = o.command;
  if (c.empty()) return absl::InvalidArgumentError("missing command");
  if (!IsCommand(c)) return absl::InvalidArgumentError(absl::StrCat("unknown command '", c, "'"));
  if (c == "generate" || c == "stream") {
    if (o.prompt.has_value() == o.token_ids.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(c, " takes a prompt: either text as the argument or --token-ids"));
    }
  } else if (c == "tokenize") {
    if (!o.prompt.has_value()) return absl::InvalidArgumentError("tokenize takes the text to tokenize");
    if (o.token_ids.has_value()) return absl::InvalidArgumentError("tokenize takes text, not --token-ids");
  } else if (o.prompt.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(c, " takes no argument"));
  }
  if (o.cancel_after_tokens > 0 && c != "stream") {
    return absl::InvalidArgumentError("--cancel-after-tokens applies to stream only");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CliOptions> ParseCliArgs(int argc, const char* const* argv) {
  CliOptions options;
  std::vector<std::string> positional;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (flags_done || arg.size() < 2 || arg[0] != '-') {
      positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    if (arg == "-h") {
      options.help = true;
      continue;
    }
    absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    if (absl::Status status = flags::ApplyFlag(Flags(), body, argc, argv, &i, &options); !status.ok()) {
      return status;
    }
  }
  if (options.help) return options;

  if (!positional.empty()) {
    options.command = positional[0];
    if (positional.size() > 1) options.prompt = positional[1];
    if (positional.size() > 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", positional[2], "' (quote a prompt with spaces)"));
    }
  }
  if (absl::Status status = CheckCommandArguments(options); !status.ok()) return status;
  if (absl::Status status = client::ValidateChannelSecurity(options.security); !status.ok()) return status;
  return options;
}

std::string UsageText() {
  std::string text =
      "usage: squat-cli <command> [flags] [prompt]\n"
      "\n"
      "commands:\n"
      "  generate PROMPT   run one request and print the whole result\n"
      "  stream PROMPT     print the result as it is generated\n"
      "  tokenize TEXT     print token ids and tokens\n"
      "  info              print the served model's description\n"
      "  health            print SERVING or NOT_SERVING\n"
      "\n"
      "flags:\n";
  absl::StrAppend(&text, flags::FlagHelp(Flags()));
  absl::StrAppend(&text,
                  "\nA failed call prints 'error: CODE: message' and exits 1; usage errors exit 2.\n");
  return text;
}

}  // namespace squat::cli
