// common/flag_table.h: the parsing rules and value parsers every command-line tool shares.
#include "common/flag_table.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace squat::flags {
namespace {

struct Part {
  bool on = false;
  std::string path;
};

struct Options {
  int64_t count = -1;
  uint32_t bits = 7;
  double rate = -1;
  float temperature = -1;
  bool verbose = false;
  std::optional<bool> special;
  std::string name;
  Part part;
};

std::vector<FlagSpec<Options>> Table() {
  std::vector<FlagSpec<Options>> table = {
      {"count", false, "at least 3", IntAtLeast("count", 3, &Options::count)},
      {"bits", false, "non-negative", IntAtLeast("bits", 0, &Options::bits)},
      {"rate", false, "in [0.5, 2]", RealIn("rate", 0.5, 2.0, &Options::rate)},
      {"temperature", false, ">= 0", RealIn("temperature", 0, std::nullopt, &Options::temperature)},
      {"verbose", true, "a switch", Bool("verbose", &Options::verbose)},
      {"special", true, "optional switch", Bool("special", &Options::special)},
      {"the-name", false, "text", String(&Options::name)},
  };
  const std::vector<FlagSpec<Part>> part = {{"part-on", true, "part switch", Bool("part-on", &Part::on)},
                                            {"part-path", false, "part text", String(&Part::path)}};
  AppendPartFlags(part, &Options::part, &table);
  return table;
}

// Parses argv (after the program name) with the "--" prefix rule of squat-bench.
absl::Status Parse(const std::vector<std::string>& args, Options* options) {
  std::vector<const char*> argv = {"tool"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  const int argc = static_cast<int>(argv.size());
  const std::vector<FlagSpec<Options>> table = Table();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError("positional");
    if (absl::Status s = ApplyFlag(table, absl::string_view(arg).substr(2), argc, argv.data(), &i, options); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

class FlagTableTest : public ::testing::Test {
 protected:
  std::mt19937_64 rng_{std::random_device{}()};
  int64_t Uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
};

TEST_F(FlagTableTest, ValuesArriveInEitherFormAndUnderscoresReadAsDashes) {
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t count = Uniform(3, int64_t{1} << 40);
    const uint32_t bits = static_cast<uint32_t>(Uniform(0, 1u << 30));
    const double rate = 0.5 + 1.5 * std::uniform_real_distribution<double>(0, 1)(rng_);
    const std::string name = absl::StrCat("n", Uniform(0, 1 << 20), "=x");  // '=' inside the value
    const bool joined = Uniform(0, 1) == 1;
    auto flag = [&](const std::string& flag_name, const std::string& value) -> std::vector<std::string> {
      if (joined) return {absl::StrCat("--", flag_name, "=", value)};
      return {"--" + flag_name, value};
    };
    std::vector<std::string> args;
    for (auto part : {flag("count", absl::StrCat(count)), flag("bits", absl::StrCat(bits)),
                      flag("rate", absl::StrFormat("%.17g", rate)), flag(Uniform(0, 1) ? "the_name" : "the-name", name),
                      flag("part_path", "/tmp/p")}) {
      args.insert(args.end(), part.begin(), part.end());
    }
    args.push_back("--verbose");
    args.push_back("--part-on");
    Options o;
    ASSERT_TRUE(Parse(args, &o).ok()) << absl::StrJoin(args, " ");
    EXPECT_EQ(o.count, count);
    EXPECT_EQ(o.bits, bits);
    EXPECT_DOUBLE_EQ(o.rate, rate);
    EXPECT_EQ(o.name, name);
    EXPECT_TRUE(o.verbose);
    EXPECT_TRUE(o.part.on);
    EXPECT_EQ(o.part.path, "/tmp/p");
    EXPECT_FALSE(o.special.has_value());
  }
}

TEST_F(FlagTableTest, BooleansTakeTheUsualSpellings) {
  for (const auto& [text, want] : std::vector<std::pair<std::string, bool>>{
           {"true", true}, {"TRUE", true}, {"1", true}, {"yes", true}, {"false", false}, {"No", false}, {"0", false}}) {
    Options o;
    o.verbose = !want;
    ASSERT_TRUE(Parse({"--verbose=" + text, "--special=" + text}, &o).ok()) << text;
    EXPECT_EQ(o.verbose, want) << text;
    ASSERT_TRUE(o.special.has_value());
    EXPECT_EQ(*o.special, want) << text;
  }
  Options o;
  const absl::Status bad = Parse({"--verbose=maybe"}, &o);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "--verbose: 'maybe' is not true or false");
  // A bare boolean does not swallow the next argument.
  Options p;
  EXPECT_TRUE(Parse({"--verbose", "--count", "5"}, &p).ok());
  EXPECT_TRUE(p.verbose);
  EXPECT_EQ(p.count, 5);
}

TEST_F(FlagTableTest, OutOfRangeAndMalformedValuesNameTheFlag) {
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t below = Uniform(-1000000, 2);
    Options o;
    absl::Status s = Parse({"--count", absl::StrCat(below)}, &o);
    EXPECT_EQ(s.message(), absl::StrCat("--count: '", below, "' is not an integer >= 3"));
    EXPECT_EQ(o.count, -1) << "a rejected value must not be stored";
  }
  Options o;
  EXPECT_EQ(Parse({"--bits=-1"}, &o).message(), "--bits: '-1' is not a non-negative integer");
  EXPECT_EQ(Parse({"--bits=4x"}, &o).message(), "--bits: '4x' is not a non-negative integer");
  EXPECT_EQ(Parse({"--rate=2.5"}, &o).message(), "--rate: '2.5' is not a number in [0.5, 2]");
  EXPECT_EQ(Parse({"--rate=nan"}, &o).message(), "--rate: 'nan' is not a number in [0.5, 2]");
  EXPECT_EQ(Parse({"--temperature=-0.1"}, &o).message(), "--temperature: '-0.1' is not a number >= 0");
  EXPECT_EQ(Parse({"--temperature=inf"}, &o).message(), "--temperature: 'inf' is not a number >= 0");
  EXPECT_EQ(Parse({"--count"}, &o).message(), "--count needs a value");
  EXPECT_EQ(Parse({"--colour=red"}, &o).message(), "unknown flag '--colour=red'");
  EXPECT_EQ(Parse({"--part"}, &o).message(), "unknown flag '--part'");  // no prefix matching
}

TEST_F(FlagTableTest, HelpListsEveryFlagWithItsValueHint) {
  const std::vector<FlagSpec<Options>> table = Table();
  const std::string help = FlagHelp(table, " VALUE");
  for (const FlagSpec<Options>& flag : table) {
    const std::string line = absl::StrCat("  --", flag.name, flag.is_bool ? "" : " VALUE", "\n      ", flag.help, "\n");
    EXPECT_NE(help.find(line), std::string::npos) << flag.name;
  }
  EXPECT_EQ(std::count(help.begin(), help.end(), '\n'), 2 * static_cast<int64_t>(table.size()));
}

}  // namespace
}  // namespace squat::flags
