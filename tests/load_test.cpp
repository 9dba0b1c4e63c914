// Load test on loopback: the real squat-server on the tiny checkpoint under squat-bench
// (64 concurrent streams, a few hundred requests of mixed lengths and KV formats, random
// client cancellations). Every request must end normally or by our own cancellation, every
// KV page must come back, and the server must still drain and exit 0 on SIGTERM.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/process_test_support.h"
#include "tests/server_process_test_support.h"

namespace {

using nlohmann::json;
using namespace squat::testing_support;

// A hung server or bench must fail the test, not the whole ctest run.
constexpr std::chrono::seconds kTestTimeout(170);
constexpr std::chrono::seconds kStartupTimeout(60);
constexpr std::chrono::seconds kBenchTimeout(120);
constexpr std::chrono::seconds kPagesReturnTimeout(15);
constexpr std::chrono::seconds kExitTimeout(60);

// The load: sized to stay well under a minute on 2 cores with the tiny model even when
// the engine runs one sequence at a time.
constexpr int kConcurrency = 64;
constexpr int kRequests = 300;
constexpr int kPromptMin = 4, kPromptMax = 96;
constexpr int kMaxTokensMin = 2, kMaxTokensMax = 48;
constexpr double kCancelFraction = 0.1;

std::string TempPath(const std::string& stem) { return UniqueTempPath("squat_load", stem); }

struct RunResult {
  int exit_code = -1;  // -1: did not finish in time
  std::string out;
  std::string err;
};

RunResult RunToExit(std::vector<std::string> args, std::chrono::seconds timeout) {
  ChildProcess child(std::move(args), {TempPath("out"), TempPath("err")});
  const std::optional<int> status = child.WaitExit(timeout);
  return {status.has_value() ? ExitCodeOf(*status) : -1, child.StdoutText(), child.StderrText()};
}

// Proto JSON writes 64-bit integers as strings.
uint64_t JsonUint64(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  uint64_t parsed = 0;
  if (value.is_string() && absl::SimpleAtoi(value.get<std::string>(), &parsed)) return parsed;
  ADD_FAILURE() << "not a uint64: " << value.dump();
  return 0;
}

json ParseJson(const std::string& text) {
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << text.substr(0, 2000);
  return parsed;
}

// Checks a reported distribution against the raw samples: the count, the extremes, each
// percentile between the two samples around its rank, and their order.
void ExpectDistributionOf(const json& reported, std::vector<double> samples, const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_FALSE(samples.empty());
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  EXPECT_EQ(reported.at("count").get<size_t>(), n);
  EXPECT_DOUBLE_EQ(reported.at("min").get<double>(), samples.front());
  EXPECT_DOUBLE_EQ(reported.at("max").get<double>(), samples.back());
  const double mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(n);
  EXPECT_NEAR(reported.at("mean").get<double>(), mean, 1e-9 * std::max(1.0, mean));
  double previous = samples.front();
  for (const auto& [key, q] : std::vector<std::pair<std::string, double>>{
           {"p50", 0.50}, {"p90", 0.90}, {"p95", 0.95}, {"p99", 0.99}}) {
    const double value = reported.at(key).get<double>();
    const double rank = q * static_cast<double>(n - 1);
    EXPECT_GE(value, samples[static_cast<size_t>(std::floor(rank))]) << key;
    EXPECT_LE(value, samples[static_cast<size_t>(std::ceil(rank))]) << key;
    EXPECT_GE(value, previous) << key;
    previous = value;
  }
  EXPECT_LE(previous, samples.back());
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int port = FreeLoopbackPort();
    ASSERT_GT(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
    server_ = StartTinyServer(address_, {"--kv-pool-mib", "64", "--drain-timeout-s", "30"},
                              {TempPath("out"), TempPath("err")});
    ASSERT_TRUE(WaitServing()) << "server did not become SERVING; log:\n" << server_->StderrText();
  }

  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::fprintf(stderr, "---- squat-server log (tail) ----\n%s\n", Tail(server_->StderrText()).c_str());
    }
    server_.reset();  // kills it if still running
  }

  static std::string Tail(const std::string& text) {
    constexpr size_t kTail = 8000;
    return text.size() <= kTail ? text : text.substr(text.size() - kTail);
  }

  bool WaitServing() {
    return WaitUntilServing(*server_, kStartupTimeout, [this] {
      const RunResult health = Cli({"health", "--timeout-s", "2"});
      return health.exit_code == 0 && health.out == "SERVING\n";
    });
  }

  RunResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), SQUAT_CLI_BIN);
    args.insert(args.begin() + 2, {"--address", address_});
    return RunToExit(std::move(args), std::chrono::seconds(30));
  }

  RunResult Bench(std::vector<std::string> args) {
    args.insert(args.begin(), {SQUAT_BENCH_BIN, "--address", address_});
    return RunToExit(std::move(args), kBenchTimeout);
  }

  json ModelInfo() {
    const RunResult info = Cli({"info", "--json", "--timeout-s", "10"});
    EXPECT_EQ(info.exit_code, 0) << info.err;
    return ParseJson(info.out);
  }

  // Pages of a cancelled stream are freed at the engine's next step, so the pool may take
  // a moment to drain after the last stream closed.
  uint64_t KvPoolUsedBytesOnceIdle() {
    const auto give_up = std::chrono::steady_clock::now() + kPagesReturnTimeout;
    uint64_t used = 0;
    do {
      used = JsonUint64(ModelInfo().at("kv_pool_used_bytes"));
      if (used == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } while (std::chrono::steady_clock::now() < give_up);
    return used;
  }

  Watchdog watchdog_{"load_test", kTestTimeout};
  std::string address_;
  std::unique_ptr<ChildProcess> server_;
};

TEST_F(LoadTest, ConcurrentStreamsWithCancellationsEndCleanlyAndReturnEveryPage) {
  const uint64_t seed = Rng()() >> 1;
  SCOPED_TRACE(absl::StrCat("squat-bench --seed ", seed));
  const std::string json_path = TempPath("bench.json");
  const RunResult bench = Bench({
      "--concurrency", std::to_string(kConcurrency), "--requests", std::to_string(kRequests),
      "--prompt-tokens", absl::StrCat(kPromptMin, ",", kPromptMax),
      "--max-tokens", absl::StrCat(kMaxTokensMin, ",", kMaxTokensMax),
      "--cancel-fraction", std::to_string(kCancelFraction),
      "--kv-method", "fp16,kivi,squat,squat-post",
      "--seed", std::to_string(seed), "--timeout-s", "90",
      "--json", json_path, "--json-requests"});
  ASSERT_EQ(bench.exit_code, 0) << bench.err << bench.out;
  const json report = ParseJson(ReadFile(json_path));
  std::remove(json_path.c_str());
  ASSERT_TRUE(report.is_object());
  // The table went to stdout.
  for (const char* row : {"ttft", "itl", "e2e", "throughput"}) {
    EXPECT_TRUE(absl::StrContains(bench.out, row)) << bench.out;
  }

  // Outcomes: only normal completions (EOS is ignored, so all by length) and ours.
  EXPECT_EQ(report.at("requests").get<int>(), kRequests);
  EXPECT_EQ(report.at("unexpected").get<int>(), 0) << report.at("first_errors").dump();
  const int completed = report.at("completed").get<int>();
  const int cancelled = report.at("cancelled").get<int>();
  EXPECT_EQ(completed + cancelled, kRequests);
  for (const auto& [outcome, count] : report.at("outcomes").items()) {
    EXPECT_TRUE(outcome == "ok:length" || outcome == "cancelled_by_client") << outcome << "=" << count;
  }

  // Every request, from its own record.
  const json& records = report.at("records");
  ASSERT_EQ(records.size(), static_cast<size_t>(kRequests));
  int planned_cancels = 0, recorded_cancelled = 0, recorded_completed = 0;
  int64_t tokens = 0;
  std::map<std::string, int> methods;
  std::vector<double> ttft, itl, e2e;
  for (const json& r : records) {
    SCOPED_TRACE(r.at("request_id").get<std::string>());
    const int max_tokens = r.at("max_tokens").get<int>();
    const int cancel_after = r.at("cancel_after_tokens").get<int>();
    const int received = r.at("tokens_received").get<int>();
    const std::string outcome = r.at("outcome").get<std::string>();
    EXPECT_GE(max_tokens, kMaxTokensMin);
    EXPECT_LE(max_tokens, kMaxTokensMax);
    ++methods[r.at("kv_method").get<std::string>()];
    if (cancel_after > 0) {
      ++planned_cancels;
      EXPECT_LT(cancel_after, max_tokens);
    }
    if (outcome == "ok:length") {
      ++recorded_completed;
      EXPECT_EQ(received, max_tokens);
      EXPECT_EQ(r.at("usage_completion_tokens").get<int>(), max_tokens);
      const int prompt = r.at("usage_prompt_tokens").get<int>();
      EXPECT_GE(prompt, kPromptMin);
      EXPECT_LE(prompt, kPromptMax);
      e2e.push_back(r.at("e2e_s").get<double>());
    } else {
      ASSERT_EQ(outcome, "cancelled_by_client");
      ++recorded_cancelled;
      EXPECT_GT(cancel_after, 0) << "cancelled without a planned cancellation";
      EXPECT_GE(received, cancel_after);
      EXPECT_LE(received, max_tokens);
    }
    tokens += received;
    // Client-side timings of one request are ordered: first token, last token, the end.
    const double t_first = r.at("ttft_s").get<double>();
    const double t_last = r.at("last_token_s").get<double>();
    const double t_end = r.at("e2e_s").get<double>();
    EXPECT_GT(t_first, 0);
    EXPECT_LE(t_first, t_last);
    EXPECT_LE(t_last, t_end);
    ttft.push_back(t_first);
    const std::vector<double> gaps = r.at("itl_s").get<std::vector<double>>();
    EXPECT_LT(gaps.size(), static_cast<size_t>(received));
    for (double gap : gaps) EXPECT_GE(gap, 0);
    // Per-token gaps add up to the time between the first and the last timed token.
    EXPECT_NEAR(std::accumulate(gaps.begin(), gaps.end(), 0.0), t_last - t_first, 1e-6);
    itl.insert(itl.end(), gaps.begin(), gaps.end());
  }
  EXPECT_EQ(planned_cancels, static_cast<int>(std::lround(kCancelFraction * kRequests)));
  EXPECT_EQ(recorded_cancelled, cancelled);
  EXPECT_EQ(recorded_completed, completed);
  // A planned cancellation can lose the race against the stream's natural end, never more.
  EXPECT_GT(cancelled, 0);
  EXPECT_LE(cancelled, planned_cancels);
  EXPECT_EQ(methods.size(), 4u);  // every KV format was in the mix

  EXPECT_EQ(report.at("output_tokens").get<int64_t>(), tokens);
  const double duration = report.at("duration_s").get<double>();
  EXPECT_GT(duration, 0);
  EXPECT_NEAR(report.at("output_tokens_per_s").get<double>(), static_cast<double>(tokens) / duration,
              1e-6 * static_cast<double>(tokens) / duration);

  const json& latency = report.at("latency_s");
  ExpectDistributionOf(latency.at("ttft"), ttft, "ttft");
  ExpectDistributionOf(latency.at("itl"), itl, "itl");
  ExpectDistributionOf(latency.at("e2e"), e2e, "e2e");
  for (const char* name : {"ttft", "itl", "tpot", "e2e"}) {
    const json& d = latency.at(name);
    EXPECT_GT(d.at("p50").get<double>(), 0) << name;
    EXPECT_LE(d.at("p50").get<double>(), d.at("p99").get<double>()) << name;
  }

  // All pages returned, cancelled sequences included.
  const json info = ModelInfo();
  EXPECT_GT(JsonUint64(info.at("kv_pool_bytes")), 0u);
  EXPECT_EQ(KvPoolUsedBytesOnceIdle(), 0u);

  // The server is still healthy and shuts down cleanly.
  EXPECT_EQ(Cli({"health"}).out, "SERVING\n");
  server_->Signal(SIGTERM);
  const std::optional<int> exit_status = server_->WaitExit(kExitTimeout);
  ASSERT_TRUE(exit_status.has_value()) << "server still running after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(ExitCodeOf(*exit_status), 0);
}

TEST_F(LoadTest, BenchFailsOnUnexpectedErrorsUnlessAllowed) {
  // An unknown KV format is INVALID_ARGUMENT for every request: not one of the outcomes a
  // run may have.
  const std::string method = absl::StrCat("kv", absl::Hex(Rng()() & 0xffffff));
  const int requests = 5 + static_cast<int>(Rng()() % 10);
  const std::vector<std::string> args = {"--concurrency", "4", "--requests", std::to_string(requests),
                                         "--prompt-tokens", "3,9", "--max-tokens", "2,6",
                                         "--kv-method", method, "--json", "-", "--timeout-s", "30"};
  const RunResult failing = Bench(args);
  EXPECT_EQ(failing.exit_code, 1) << failing.err;
  EXPECT_TRUE(absl::StrContains(failing.err, "INVALID_ARGUMENT")) << failing.err;
  const json report = ParseJson(failing.out);
  ASSERT_TRUE(report.is_object());
  EXPECT_EQ(report.at("unexpected").get<int>(), requests);
  EXPECT_EQ(report.at("completed").get<int>(), 0);
  EXPECT_EQ(report.at("outcomes").at("error:INVALID_ARGUMENT").get<int>(), requests);

  std::vector<std::string> allowed = args;
  allowed.push_back("--allow-errors");
  const RunResult tolerated = Bench(allowed);
  EXPECT_EQ(tolerated.exit_code, 0) << tolerated.err;

  // Usage errors never reach the server.
  EXPECT_EQ(Bench({"--prompt-tokens", "9,3"}).exit_code, 2);
  EXPECT_EQ(Bench({"--cancel-fraction", "1.5"}).exit_code, 2);
  EXPECT_EQ(Bench({"--requests"}).exit_code, 2);

  // A server that is not there: exit 1 with the reason.
  const RunResult nowhere = RunToExit({SQUAT_BENCH_BIN, "--address", absl::StrCat("127.0.0.1:", FreeLoopbackPort()),
                                 "--requests", "1"},
                                std::chrono::seconds(30));
  EXPECT_EQ(nowhere.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(nowhere.err, "GetModelInfo")) << nowhere.err;
}

}  // namespace
