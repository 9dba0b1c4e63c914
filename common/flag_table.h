// Command-line flags as a table: each flag has a name, whether it takes a value, a help line
// and a setter on an options struct. squat-cli, squat-bench and squat-throughput share the
// parsing rules ("--name value", "--name=value", '_' read as '-', a bare boolean flag is true)
// and the value parsers, so that every tool reports a bad value the same way. Header-only:
// abseil only.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace squat::flags {

template <typename Options>
using Setter = std::function<absl::Status(Options*, absl::string_view)>;

template <typename Options>
struct FlagSpec {
  const char* name;  // without "--"
  bool is_bool;      // takes no value (or =true / =false)
  const char* help;
  Setter<Options> set;
};

// "--flag: 'value' is not <want>".
inline absl::Status BadValue(absl::string_view flag, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", value, "' is not ", want));
}

// Empty (a bare flag), true/1/yes or false/0/no, any case.
inline absl::StatusOr<bool> ParseBool(absl::string_view flag, absl::string_view value) {
  const std::string lower = absl::AsciiStrToLower(value);
  if (lower.empty() || lower == "true" || lower == "1" || lower == "yes") return true;
  if (lower == "false" || lower == "0" || lower == "no") return false;
  return BadValue(flag, value, "true or false");
}

// Keeps a parameter out of template deduction (the field's type decides).
template <typename T>
struct NonDeduced {
  using type = T;
};

// An integer >= minimum.
template <typename Options, typename Int>
Setter<Options> IntAtLeast(const char* flag, typename NonDeduced<Int>::type minimum, Int Options::*field) {
  return [flag, minimum, field](Options* o, absl::string_view v) {
    Int parsed;
    if (!absl::SimpleAtoi(v, &parsed) || parsed < minimum) {
      return BadValue(flag, v, minimum == 0 ? std::string("a non-negative integer") : absl::StrCat("an integer >= ", minimum));
    }
    o->*field = parsed;
    return absl::OkStatus();
  };
}

// A finite number >= minimum (and <= maximum when given).
template <typename Options, typename Real>
Setter<Options> RealIn(const char* flag, double minimum, std::optional<double> maximum, Real Options::*field) {
  return [=](Options* o, absl::string_view v) {
    double parsed;
    if (!absl::SimpleAtod(v, &parsed) || !std::isfinite(parsed) || parsed < minimum ||
        (maximum.has_value() && parsed > *maximum)) {
      return BadValue(flag, v,
                      maximum.has_value() ? absl::StrCat("a number in [", minimum, ", ", *maximum, "]")
                                          : absl::StrCat("a number >= ", minimum));
    }
    o->*field = static_cast<Real>(parsed);
    return absl::OkStatus();
  };
}

// Into a bool or an optional bool.
template <typename Options, typename Field>
Setter<Options> Bool(const char* flag, Field Options::*field) {
  return [flag, field](Options* o, absl::string_view v) {
    absl::StatusOr<bool> parsed = ParseBool(flag, v);
    if (!parsed.ok()) return parsed.status();
    o->*field = *parsed;
    return absl::OkStatus();
  };
}

template <typename Options>
Setter<Options> String(std::string Options::*field) {
  return [field](Options* o, absl::string_view v) {
    o->*field = std::string(v);
    return absl::OkStatus();
  };
}

// Appends the flags of a part of the options (e.g. the channel security every client shares).
template <typename Options, typename Part>
void AppendPartFlags(const std::vector<FlagSpec<Part>>& part_flags, Part Options::*part,
                     std::vector<FlagSpec<Options>>* table) {
  for (const FlagSpec<Part>& flag : part_flags) {
    table->push_back({flag.name, flag.is_bool, flag.help,
                      [set = flag.set, part](Options* o, absl::string_view v) { return set(&(o->*part), v); }});
  }
}

// Applies the flag in argv[*i], whose text after the leading dashes is `body` ("name" or
// "name=value"). A flag that takes a value and has no "=value" takes argv[*i + 1] (*i moves on).
template <typename Options>
absl::Status ApplyFlag(const std::vector<FlagSpec<Options>>& table, absl::string_view body, int argc,
                       const char* const* argv, int* i, Options* options) {
  absl::string_view name = body;
  std::optional<absl::string_view> value;
  if (const size_t eq = body.find('='); eq != absl::string_view::npos) {
    name = body.substr(0, eq);
    value = body.substr(eq + 1);
  }
  std::string normalized(name);
  for (char& ch : normalized) {
    if (ch == '_') ch = '-';
  }
  const FlagSpec<Options>* flag = nullptr;
  for (const FlagSpec<Options>& candidate : table) {
    if (normalized == candidate.name) flag = &candidate;
  }
  if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag '", argv[*i], "'"));
  if (!value.has_value()) {
    if (flag->is_bool) {
      value = "";
    } else if (*i + 1 < argc) {
      value = argv[++*i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", flag->name, " needs a value"));
    }
  }
  return flag->set(options, *value);
}

// "  --name=VALUE\n      help\n" per flag (`value_hint` after the name of flags with a value).
template <typename Options>
std::string FlagHelp(const std::vector<FlagSpec<Options>>& table, absl::string_view value_hint = "=VALUE") {
  std::string text;
  for (const FlagSpec<Options>& flag : table) {
    absl::StrAppend(&text, "  --", flag.name, flag.is_bool ? "" : value_hint, "\n      ", flag.help, "\n");
  }
  return text;
}

}  // namespace squat::flags
