// A real Prometheus server (Debian package `prometheus`) scrapes the real squat-server every
// second on loopback. After a known set of requests, and after a scrape that started once they
// had all finished, Prometheus' HTTP API must report exactly the counts the client produced.

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/metrics_server_support.h"
#include "tests/metrics_test_support.h"
#include "tests/process_test_support.h"

namespace {

using namespace squat::testing_support;
using nlohmann::json;

constexpr std::chrono::seconds kTestTimeout(90);
constexpr std::chrono::seconds kPrometheusTimeout(30);

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class PrometheusIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prometheus_bin_ = FindOnPath("prometheus");
    if (prometheus_bin_.empty()) {
      GTEST_SKIP() << "prometheus not found on PATH (tools/install_deps.sh installs the Debian "
                      "package 'prometheus')";
    }
    // The server loads its model while Prometheus starts (whose first scrape comes ~5 s after
    // its start: its scrape manager applies targets on a 5 s tick).
    server_ = std::make_unique<MetricsServer>(std::vector<std::string>{"--kv-pool-mib", "64"});
    dir_ = UniqueTempPath("squat_prometheus", "dir");
    std::filesystem::create_directories(dir_ + "/data");
    const std::string config = dir_ + "/prometheus.yml";
    std::ofstream(config) << "global:\n"
                             "  scrape_interval: 1s\n"
                             "  scrape_timeout: 1s\n"
                             "  evaluation_interval: 1s\n"
                             "scrape_configs:\n"
                             "  - job_name: squat\n"
                             "    static_configs:\n"
                             "      - targets: ['127.0.0.1:"
                          << server_->metrics_port() << "']\n";
    prometheus_port_ = FreeLoopbackPort();
    prometheus_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{prometheus_bin_, "--config.file=" + config,
                                 "--storage.tsdb.path=" + dir_ + "/data",
                                 absl::StrCat("--web.listen-address=127.0.0.1:", prometheus_port_),
                                 "--log.level=warn"},
        ChildOutput::Log(dir_ + "/prometheus.log"));
    const auto give_up = std::chrono::steady_clock::now() + kPrometheusTimeout;
    while (HttpGet(prometheus_port_, "/-/ready").status != 200) {
      ASSERT_FALSE(prometheus_->WaitExit(std::chrono::milliseconds(0)).has_value())
          << "prometheus exited:\n" << prometheus_->StdoutText();
      ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "prometheus not ready:\n" << prometheus_->StdoutText();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(server_->WaitServing()) << "server did not become SERVING; log:\n" << server_->Log();
  }

  void TearDown() override {
    if (HasFailure() && prometheus_ != nullptr) {
      std::fprintf(stderr, "---- prometheus log ----\n%s\n", prometheus_->StdoutText().c_str());
    }
    // Both are killed and reaped; nothing of theirs outlives the test (the TSDB goes too).
    prometheus_.reset();
    server_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // An instant query: each series' labels and value.
  std::vector<std::pair<json, double>> Query(const std::string& promql) {
    const HttpResponse response = HttpGet(prometheus_port_, "/api/v1/query?query=" + UrlEncode(promql));
    EXPECT_EQ(response.status, 200) << promql << ": " << response.body;
    const json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    std::vector<std::pair<json, double>> series;
    if (!body.is_object() || body.value("status", "") != "success") {
      ADD_FAILURE() << promql << ": " << response.body;
      return series;
    }
    for (const json& item : body["data"]["result"]) {
      double value = 0;
      EXPECT_TRUE(absl::SimpleAtod(item["value"][1].get<std::string>(), &value)) << item.dump();
      series.emplace_back(item["metric"], value);
    }
    return series;
  }

  // The value of a query that yields one series; NaN (and a failure) otherwise.
  double Scalar(const std::string& promql) {
    const auto series = Query(promql);
    if (series.size() != 1) {
      ADD_FAILURE() << promql << " gave " << series.size() << " series";
      return std::nan("");
    }
    return series[0].second;
  }

  // label value -> value, for a query that sums by one label.
  std::map<std::string, double> ByLabel(const std::string& promql, const std::string& label) {
    std::map<std::string, double> values;
    for (const auto& [metric, value] : Query(promql)) values[metric.value(label, "")] = value;
    return values;
  }

  Watchdog watchdog_{"prometheus_integration_test", kTestTimeout};
  std::string prometheus_bin_;
  std::unique_ptr<MetricsServer> server_;
  std::string dir_;
  int prometheus_port_ = 0;
  std::unique_ptr<ChildProcess> prometheus_;
};

TEST_F(PrometheusIntegrationTest, QueriedCountsEqualTheRequestsSent) {
  auto& stub = server_->stub();
  struct Variant {
    std::string method;
    std::string label;
  };
  const std::vector<Variant> variants = {{"", "squat-k2v2"}, {"fp16", "fp16"}};
  std::map<std::string, double> tokens_by_format, requests_by_format;
  double prompt_tokens = 0, requests = 0, stop_requests = 0;
  const int count = 6 + static_cast<int>(Rng()() % 5);
  for (int i = 0; i < count; ++i) {
    const Variant& v = variants[static_cast<size_t>(i) % variants.size()];
    const int max_tokens = 2 + static_cast<int>(Rng()() % 7);
    const auto request = MakeRequest(absl::StrCat("prom-", i), RandomPrompt(), max_tokens, v.method);
    if (i % 3 == 2) {
      const StreamResult result = Stream(stub, request);
      ASSERT_TRUE(result.status.ok()) << result.status.error_message();
      tokens_by_format[v.label] += result.tokens;
      prompt_tokens += result.last.usage().prompt_tokens();
    } else {
      squat::v1::GenerateResponse response;
      ASSERT_TRUE(Generate(stub, request, &response).ok());
      tokens_by_format[v.label] += response.token_ids_size();
      prompt_tokens += response.usage().prompt_tokens();
    }
    requests_by_format[v.label] += 1;
    requests += 1;
  }
  // A stop token (the greedy first token of the same prompt) ends one request with 0 tokens.
  {
    const std::string prompt = RandomPrompt();
    auto request = MakeRequest("prom-greedy", prompt, 1);
    request.mutable_sampling()->set_temperature(0);
    squat::v1::GenerateResponse first, stopped;
    ASSERT_TRUE(Generate(stub, request, &first).ok());
    ASSERT_EQ(first.token_ids_size(), 1);
    request.set_request_id("prom-stop");
    request.mutable_sampling()->set_max_tokens(5);
    request.mutable_sampling()->add_stop_token_ids(first.token_ids(0));
    ASSERT_TRUE(Generate(stub, request, &stopped).ok());
    ASSERT_EQ(stopped.finish_reason(), squat::v1::FINISH_REASON_STOP);
    tokens_by_format["squat-k2v2"] += 1;
    requests_by_format["squat-k2v2"] += 2;
    prompt_tokens += first.usage().prompt_tokens() + stopped.usage().prompt_tokens();
    requests += 2;
    stop_requests += 1;
  }
  const int invalid = 1 + static_cast<int>(Rng()() % 3);
  for (int i = 0; i < invalid; ++i) {
    squat::v1::GenerateResponse response;
    EXPECT_EQ(Generate(stub, MakeRequest(absl::StrCat("prom-bad-", i), "", 3), &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }

  // Counters change before a call's status reaches the client, so a scrape that starts after
  // this moment sees every request.
  const double all_done = NowSeconds();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  double scraped_at = 0;
  while (scraped_at <= all_done) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "no scrape after the requests";
    const auto up = Query("timestamp(up{job=\"squat\"})");
    if (up.size() == 1) scraped_at = up[0].second;
    if (scraped_at <= all_done) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(Scalar("up{job=\"squat\"}"), 1);

  EXPECT_EQ(Scalar("sum(squat_requests_total)"), requests);
  const auto by_reason = ByLabel("sum by (finish_reason) (squat_requests_total)", "finish_reason");
  EXPECT_EQ(by_reason.at("length"), requests - stop_requests);
  EXPECT_EQ(by_reason.at("stop"), stop_requests);
  for (const char* reason : {"eos", "cancelled", "error"}) EXPECT_EQ(by_reason.at(reason), 0) << reason;

  const auto tokens = ByLabel("sum by (format) (squat_generation_tokens_total)", "format");
  const auto e2e = ByLabel("sum by (format) (squat_e2e_request_latency_seconds_count)", "format");
  const auto ttft = ByLabel("sum by (format) (squat_time_to_first_token_seconds_count)", "format");
  for (const auto& [format, expected] : tokens_by_format) {
    SCOPED_TRACE(format);
    EXPECT_EQ(tokens.at(format), expected);
    EXPECT_EQ(e2e.at(format), requests_by_format[format]);
    EXPECT_EQ(ttft.at(format), requests_by_format[format]);  // every request sampled a token
  }
  EXPECT_EQ(Scalar("squat_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(Scalar("squat_request_errors_total{code=\"INVALID_ARGUMENT\"}"), invalid);
  EXPECT_EQ(Scalar("sum(squat_request_errors_total)"), invalid);
  EXPECT_EQ(Scalar("squat_request_queue_time_seconds_count"), requests);
  EXPECT_EQ(Scalar("squat_requests_running"), 0);
  EXPECT_EQ(Scalar("squat_kv_cache_bytes{state=\"used\"}"), 0);
  // Histograms work in PromQL: the median TTFT lies within the buckets' range.
  const double median_ttft =
      Scalar("histogram_quantile(0.5, sum by (le) (squat_time_to_first_token_seconds_bucket))");
  EXPECT_GT(median_ttft, 0);
  EXPECT_LE(median_ttft, 60);
}

}  // namespace
