// Structured logs (runtime/log/log.h): JSON lines parse as one object each with time, level, msg and
// the fields; text lines put the request id first; levels filter. stderr is captured in a file.
#include <fcntl.h>
#include <unistd.h>

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/log/log.h"
#include "tests/process_test_support.h"

namespace {

using namespace squat::testing_support;
namespace log = squat::log;

// Sends stderr to a file while it lives; Text() has what was written.
class CapturedStderr {
 public:
  CapturedStderr() : path_(UniqueTempPath("squat_log", "stderr")) {
    std::fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    const int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  ~CapturedStderr() {
    Restore();
    std::remove(path_.c_str());
  }
  std::string Text() {
    Restore();
    return ReadFile(path_);
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    saved_ = -1;
  }
  std::string path_;
  int saved_ = -1;
};

std::string RandomWord() {
  static const char kLetters[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string word;
  const int length = 3 + static_cast<int>(Rng()() % 8);
  for (int i = 0; i < length; ++i) word += kLetters[Rng()() % (sizeof(kLetters) - 1)];
  return word;
}

std::vector<nlohmann::json> JsonLines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(parsed.is_object()) << "not a JSON object: " << line;
    lines.push_back(parsed);
  }
  return lines;
}

TEST(MetricsLogTest, JsonLinesCarryTimeLevelMessageAndTypedFields) {
  const std::string id = "req-" + RandomWord();
  const std::string message = "generate finished " + RandomWord();
  const int64_t tokens = static_cast<int64_t>(Rng()() % 100000);
  const double seconds = std::uniform_real_distribution<double>(0, 100)(Rng());
  // Quotes, a backslash, a newline, a tab and bytes that are not UTF-8 must not break the line.
  const std::string awkward = "say \"hi\"\\ now\nand\tthen \xff\xfe end";
  std::string text;
  {
    CapturedStderr captured;
    log::Configure(log::Format::kJson, "info");
    log::Info(message, {{log::kRequestIdKey, id},
                        {"completion_tokens", tokens},
                        {"total_seconds", seconds},
                        {"streamed", true},
                        {"error", awkward}});
    log::Warn(awkward);
    log::Debug("hidden at info level", {{log::kRequestIdKey, id}});
    spdlog::error("direct spdlog call {}", tokens);  // third-party style lines are JSON too
    text = captured.Text();
  }
  const std::vector<nlohmann::json> lines = JsonLines(text);
  ASSERT_EQ(lines.size(), 3u) << text;

  const nlohmann::json& first = lines[0];
  EXPECT_EQ(first.at("level"), "info");
  EXPECT_EQ(first.at("msg"), message);
  EXPECT_EQ(first.at("request_id"), id);
  EXPECT_TRUE(first.at("completion_tokens").is_number_integer());
  EXPECT_EQ(first.at("completion_tokens").get<int64_t>(), tokens);
  EXPECT_DOUBLE_EQ(first.at("total_seconds").get<double>(), seconds);
  EXPECT_EQ(first.at("streamed"), true);
  // Valid UTF-8 survives byte for byte; the invalid bytes become U+FFFD.
  EXPECT_EQ(first.at("error").get<std::string>(), "say \"hi\"\\ now\nand\tthen \xef\xbf\xbd\xef\xbf\xbd end");
  // RFC 3339 UTC with milliseconds.
  const std::string time = first.at("time");
  ASSERT_EQ(time.size(), 24u) << time;
  EXPECT_EQ(time[4], '-');
  EXPECT_EQ(time[10], 'T');
  EXPECT_EQ(time[19], '.');
  EXPECT_EQ(time[23], 'Z');

  EXPECT_EQ(lines[1].at("level"), "warning");
  EXPECT_FALSE(lines[1].contains("request_id"));
  EXPECT_EQ(lines[2].at("level"), "error");
  EXPECT_EQ(lines[2].at("msg"), absl::StrCat("direct spdlog call ", tokens));
}

TEST(MetricsLogTest, TextLinesPutTheRequestIdFirstAndQuoteWhereNeeded) {
  const std::string id = "req-" + RandomWord();
  const std::string word = RandomWord();
  const int64_t n = static_cast<int64_t>(Rng()() % 1000);
  EXPECT_EQ(log::RenderText("stream finished", {{"finish_reason", word},
                                                {log::kRequestIdKey, id},
                                                {"completion_tokens", n},
                                                {"ttft_seconds", 0.25},
                                                {"error", "two words"},
                                                {"empty", ""},
                                                {"ok", false}}),
            absl::StrCat("[", id, "] stream finished finish_reason=", word, " completion_tokens=", n,
                         " ttft_seconds=0.2500 error=\"two words\" empty=\"\" ok=false"));
  EXPECT_EQ(log::RenderText("no fields", {}), "no fields");

  std::string text;
  {
    CapturedStderr captured;
    log::Configure(log::Format::kText, "debug");
    log::Debug("debug line", {{log::kRequestIdKey, id}, {"n", n}});
    log::Error("error line");
    text = captured.Text();
  }
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << text;
  EXPECT_TRUE(absl::StrContains(lines[0], absl::StrCat("[debug] [", id, "] debug line n=", n))) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[1], "[error] error line")) << lines[1];
}

TEST(MetricsLogTest, FormatNamesParse) {
  log::Format format = log::Format::kText;
  EXPECT_TRUE(log::ParseFormat("json", &format));
  EXPECT_EQ(format, log::Format::kJson);
  EXPECT_TRUE(log::ParseFormat("text", &format));
  EXPECT_EQ(format, log::Format::kText);
  EXPECT_FALSE(log::ParseFormat("JSON", &format));
  EXPECT_FALSE(log::ParseFormat("", &format));
}

}  // namespace
