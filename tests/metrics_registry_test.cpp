// Unit tests of server/metrics and server/metrics_http: random observations go in, the text
// exposition format comes out and is parsed back, and every count, sum and bucket is checked
// against what this file computes from the same inputs. The families, types and labels are
// checked against the table of docs/metrics.md, the contract.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "tests/metrics_test_support.h"

namespace {

using namespace squat::testing_support;
using squat::EngineStats;
using squat::FinishReason;
using squat::KvFormatDescription;
using squat::KvPoolUsage;
using squat::ModelDescription;
using squat::StepInfo;
using squat::Timings;
using squat::server::MetricsHttpServer;
using squat::server::ServerMetrics;

// The buckets of docs/metrics.md, written out here independently of server/metrics.cpp.
const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    20,   30,  60};
const std::vector<double> kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5};
const std::vector<double> kCountBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};

constexpr FinishReason kReasons[] = {FinishReason::kLength, FinishReason::kStop, FinishReason::kEos,
                                     FinishReason::kCancelled, FinishReason::kError};

double Uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(Rng()); }
int UniformInt(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(Rng()); }

// Log-uniform over [lo, hi], so every bucket sees values; one in eight draws lands exactly on a
// bucket bound (Prometheus buckets are "less or equal").
double LatencySample(const std::vector<double>& bounds, double lo, double hi) {
  if (UniformInt(0, 7) == 0) return bounds[static_cast<size_t>(UniformInt(0, static_cast<int>(bounds.size()) - 1))];
  return std::exp(Uniform(std::log(lo), std::log(hi)));
}

// Checks one histogram series: its `le` bounds are exactly `bounds` then +Inf, each bucket
// counts the observations <= its bound, and _count / _sum match.
void ExpectHistogram(const std::vector<Sample>& samples, const std::string& name, const Labels& labels,
                     const std::vector<double>& bounds, const std::vector<double>& observations) {
  SCOPED_TRACE(name);
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
  for (const Sample& s : samples) {
    if (s.name != name + "_bucket") continue;
    Labels rest = s.labels;
    const auto le = rest.find("le");
    ASSERT_NE(le, rest.end());
    const std::string le_text = le->second;
    rest.erase(le);
    if (rest != labels) continue;
    double bound = 0;
    if (le_text == "+Inf") {
      bound = HUGE_VAL;
    } else {
      ASSERT_TRUE(absl::SimpleAtod(le_text, &bound)) << le_text;
    }
    buckets.emplace_back(bound, s.value);
  }
  std::sort(buckets.begin(), buckets.end());
  ASSERT_EQ(buckets.size(), bounds.size() + 1);
  for (size_t i = 0; i < bounds.size(); ++i) {
    EXPECT_DOUBLE_EQ(buckets[i].first, bounds[i]);
    const auto expected = std::count_if(observations.begin(), observations.end(),
                                        [&](double v) { return v <= bounds[i]; });
    EXPECT_EQ(buckets[i].second, static_cast<double>(expected)) << "le=" << bounds[i];
  }
  EXPECT_EQ(buckets.back().first, HUGE_VAL);
  EXPECT_EQ(buckets.back().second, static_cast<double>(observations.size()));
  EXPECT_EQ(SampleValue(samples, name + "_count", labels), static_cast<double>(observations.size()));
  double sum = 0;
  for (double v : observations) sum += v;
  EXPECT_NEAR(SampleValue(samples, name + "_sum", labels), sum, 1e-9 * std::max(1.0, sum));
}

// A stand-in engine whose pool usage and stats the test sets; counts how often it is read.
class FakeEngine final : public squat::Engine {
 public:
  absl::StatusOr<std::shared_ptr<squat::RequestStream>> Submit(squat::GenerateRequest) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string&, bool) const override {
    return absl::UnimplementedError("fake");
  }
  std::string TokenText(int32_t) const override { return ""; }
  ModelDescription Describe() const override { return {}; }
  KvPoolUsage PoolUsage() const override {
    ++reads;
    return pool;
  }
  EngineStats Stats() const override { return stats; }
  void StopAccepting() override {}
  bool WaitIdle(std::chrono::milliseconds) override { return true; }
  void Shutdown() override {}

  KvPoolUsage pool;
  EngineStats stats;
  mutable std::atomic<int> reads{0};
};

ModelDescription RandomDescription() {
  ModelDescription d;
  d.model_name = "model-" + std::to_string(UniformInt(0, 1 << 20));
  d.device = "cpu";
  d.dtype = "float32";
  d.weight_bytes = UniformInt(1, 1 << 30);
  d.workspace_bytes = UniformInt(0, 1 << 20);
  const double full = 64 * UniformInt(1, 64);
  auto add = [&](const std::string& method, int k, int v, double bytes, bool is_default) {
    KvFormatDescription f;
    f.label = method == "fp16" ? method : absl::StrCat(method, "-k", k, "v", v);
    f.method = method;
    f.k_bits = k;
    f.v_bits = v;
    f.bytes_per_token = bytes;
    f.capacity_tokens = static_cast<uint64_t>(UniformInt(1, 1 << 24));
    f.is_default = is_default;
    d.kv_formats.push_back(f);
  };
  add("fp16", 32, 32, full, false);
  add("kivi", 4, 4, full / Uniform(2, 8), false);
  add("squat", 2, 2, full / Uniform(4, 12), true);
  return d;
}

TEST(MetricsRegistryTest, RequestObservationsLandInTheirSeriesAndBuckets) {
  ServerMetrics metrics;
  const std::vector<std::string> formats = {"squat-k2v2", "kivi-k4v4"};
  struct Expected {
    double tokens = 0;
    std::map<std::string, double> requests;  // by finish reason
    std::vector<double> ttft, itl, e2e;
  };
  std::map<std::string, Expected> expected;
  std::vector<double> queue;
  double prompt_tokens = 0;
  const int requests = UniformInt(30, 60);
  for (int r = 0; r < requests; ++r) {
    const std::string& format = formats[static_cast<size_t>(UniformInt(0, 1))];
    Expected& e = expected[format];
    squat::server::RequestMetrics request = metrics.StartRequest(format);
    // Tokens arrive one event at a time, now and then several in one event.
    double t = Uniform(0.001, 0.5);
    const int events = UniformInt(0, 12);
    for (int i = 0; i < events; ++i) {
      const int tokens = UniformInt(0, 3) == 0 ? UniformInt(2, 4) : 1;
      if (i > 0) {
        const double previous = t;
        t += LatencySample(kStepBuckets, 1e-4, 8.0);
        e.itl.push_back(t - previous);  // the gap as the event times give it
      }
      request.OnTokens(tokens, t);
      e.tokens += tokens;
    }
    request.OnTokens(0, t + 1);  // a final event without tokens observes no gap
    Timings timings;
    timings.queue_seconds = UniformInt(0, 4) == 0 ? 0 : LatencySample(kLatencyBuckets, 1e-4, 90);
    timings.time_to_first_token_seconds = UniformInt(0, 4) == 0 ? 0 : LatencySample(kLatencyBuckets, 1e-4, 90);
    timings.total_seconds = LatencySample(kLatencyBuckets, 1e-4, 90);
    const FinishReason reason = kReasons[UniformInt(0, 4)];
    const int prompt = UniformInt(1, 4000);
    request.OnEnd(reason, prompt, timings);
    prompt_tokens += prompt;
    e.requests[squat::FinishReasonName(reason)] += 1;
    if (timings.time_to_first_token_seconds > 0) e.ttft.push_back(timings.time_to_first_token_seconds);
    if (timings.queue_seconds > 0) queue.push_back(timings.queue_seconds);
    e.e2e.push_back(timings.total_seconds);
  }

  const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
  EXPECT_EQ(SampleValue(samples, "squat_prompt_tokens_total"), prompt_tokens);
  ExpectHistogram(samples, "squat_request_queue_time_seconds", {}, kLatencyBuckets, queue);
  for (const std::string& format : formats) {
    SCOPED_TRACE(format);
    const Expected& e = expected[format];
    const Labels labels = {{"format", format}};
    if (e.e2e.empty()) continue;  // this format drew no request
    EXPECT_EQ(SampleValue(samples, "squat_generation_tokens_total", labels), e.tokens);
    for (FinishReason reason : kReasons) {
      const std::string name = squat::FinishReasonName(reason);
      const auto it = e.requests.find(name);
      EXPECT_EQ(SampleValue(samples, "squat_requests_total", {{"finish_reason", name}, {"format", format}}),
                it == e.requests.end() ? 0 : it->second);
    }
    ExpectHistogram(samples, "squat_time_to_first_token_seconds", labels, kLatencyBuckets, e.ttft);
    ExpectHistogram(samples, "squat_inter_token_latency_seconds", labels, kStepBuckets, e.itl);
    ExpectHistogram(samples, "squat_e2e_request_latency_seconds", labels, kLatencyBuckets, e.e2e);
  }
}

TEST(MetricsRegistryTest, EngineStepsFeedThePhaseHistogramsAndPreemptions) {
  ServerMetrics metrics;
  std::map<bool, std::vector<double>> durations, sizes, tokens;
  double preemptions = 0;
  const int steps = UniformInt(50, 200);
  for (int i = 0; i < steps; ++i) {
    StepInfo step;
    step.prefill = UniformInt(0, 3) == 0;
    step.num_sequences = UniformInt(1, 300);
    step.num_tokens = UniformInt(0, 1) == 0 ? static_cast<int64_t>(kCountBuckets[UniformInt(0, 12)])
                                            : UniformInt(step.num_sequences, 5000);
    step.duration_seconds = LatencySample(kStepBuckets, 1e-4, 9);
    metrics.OnStep(step);
    durations[step.prefill].push_back(step.duration_seconds);
    sizes[step.prefill].push_back(step.num_sequences);
    tokens[step.prefill].push_back(static_cast<double>(step.num_tokens));
    if (UniformInt(0, 9) == 0) {
      const int n = UniformInt(1, 5);
      metrics.OnPreemptions(n);
      preemptions += n;
    }
  }
  const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
  for (bool prefill : {true, false}) {
    const Labels phase = {{"phase", prefill ? "prefill" : "decode"}};
    ExpectHistogram(samples, "squat_step_duration_seconds", phase, kStepBuckets, durations[prefill]);
    ExpectHistogram(samples, "squat_batch_size", phase, kCountBuckets, sizes[prefill]);
    ExpectHistogram(samples, "squat_batch_tokens", phase, kCountBuckets, tokens[prefill]);
  }
  EXPECT_EQ(SampleValue(samples, "squat_preemptions_total"), preemptions);
}

TEST(MetricsRegistryTest, ErrorsAreCountedByCodeAndCommonCodesStartAtZero) {
  ServerMetrics metrics;
  std::map<std::string, double> expected = {{"INVALID_ARGUMENT", 0}, {"RESOURCE_EXHAUSTED", 0},
                                            {"UNAVAILABLE", 0},      {"DEADLINE_EXCEEDED", 0},
                                            {"CANCELLED", 0},        {"INTERNAL", 0}};
  const std::vector<std::string> codes = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                                          "CANCELLED", "NOT_FOUND"};
  const int errors = UniformInt(0, 40);
  for (int i = 0; i < errors; ++i) {
    const std::string& code = codes[static_cast<size_t>(UniformInt(0, 4))];
    metrics.CountError(code);
    expected[code] += 1;
  }
  const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
  for (const auto& [code, count] : expected) {
    EXPECT_EQ(SampleValue(samples, "squat_request_errors_total", {{"code", code}}), count) << code;
  }
}

TEST(MetricsRegistryTest, SnapshotGaugesAreReadFromTheEngineAtEachScrape) {
  ServerMetrics metrics;
  FakeEngine engine;
  const ModelDescription description = RandomDescription();
  metrics.AttachEngine(&engine, description, "9.8.7");
  for (int scrape = 0; scrape < 3; ++scrape) {
    engine.pool.page_bytes = UniformInt(1, 1 << 16);
    engine.pool.total_pages = UniformInt(1, 1 << 14);
    engine.pool.used_pages = UniformInt(0, static_cast<int>(engine.pool.total_pages));
    engine.stats.running = UniformInt(0, 256);
    engine.stats.waiting = UniformInt(0, 256);
    const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
    const double page = static_cast<double>(engine.pool.page_bytes);
    const double used = page * static_cast<double>(engine.pool.used_pages);
    const double total = page * static_cast<double>(engine.pool.total_pages);
    EXPECT_EQ(SampleValue(samples, "squat_requests_running"), engine.stats.running);
    EXPECT_EQ(SampleValue(samples, "squat_requests_waiting"), engine.stats.waiting);
    EXPECT_DOUBLE_EQ(SampleValue(samples, "squat_kv_cache_usage_ratio"),
                     static_cast<double>(engine.pool.used_pages) / static_cast<double>(engine.pool.total_pages));
    EXPECT_EQ(SampleValue(samples, "squat_kv_cache_bytes", {{"state", "used"}}), used);
    EXPECT_EQ(SampleValue(samples, "squat_kv_cache_bytes", {{"state", "free"}}), total - used);
    EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "kv_pool"}}), total);
    EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "weights"}}),
              static_cast<double>(description.weight_bytes));
    EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "workspace"}}),
              static_cast<double>(description.workspace_bytes));
  }
  const double full = description.kv_formats[0].bytes_per_token;
  for (const KvFormatDescription& f : description.kv_formats) {
    const Labels labels = {{"format", f.label}};
    const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
    EXPECT_EQ(SampleValue(samples, "squat_kv_cache_tokens", labels), static_cast<double>(f.capacity_tokens));
    EXPECT_DOUBLE_EQ(SampleValue(samples, "squat_kv_bytes_per_token", labels), f.bytes_per_token);
    EXPECT_NEAR(SampleValue(samples, "squat_kv_compression_ratio", labels), full / f.bytes_per_token, 1e-9);
    // Counters of every listed format exist (at 0) before its first request.
    EXPECT_EQ(SampleValue(samples, "squat_generation_tokens_total", labels), 0);
    for (FinishReason reason : kReasons) {
      EXPECT_EQ(SampleValue(samples, "squat_requests_total",
                            {{"finish_reason", squat::FinishReasonName(reason)}, *labels.begin()}),
                0);
    }
  }
  const std::vector<Sample> samples = ParseExposition(metrics.ScrapeText());
  EXPECT_EQ(SampleValue(samples, "squat_model_info",
                        {{"model", description.model_name},
                         {"device", "cpu"},
                         {"dtype", "float32"},
                         {"kv_format", "squat-k2v2"},
                         {"version", "9.8.7"}}),
            1);

  // Once detached, scrapes leave the engine alone.
  metrics.DetachEngine();
  const int reads = engine.reads.load();
  metrics.ScrapeText();
  EXPECT_EQ(engine.reads.load(), reads);
}

// One row of the table in docs/metrics.md.
struct DocumentedFamily {
  std::string type;
  std::map<std::string, std::set<std::string>> labels;  // name -> allowed values (empty: any)
};

std::map<std::string, DocumentedFamily> ReadMetricsDoc() {
  std::ifstream in(SQUAT_SOURCE_DIR "/docs/metrics.md");
  EXPECT_TRUE(in.good()) << "cannot read docs/metrics.md";
  std::map<std::string, DocumentedFamily> families;
  const std::regex backticked("`([^`]*)`");
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "| `squat_")) continue;
    // | `name` | type | labels | meaning |  ("\|" inside a cell is an escaped bar)
    std::string unescaped = line;
    size_t pos;
    while ((pos = unescaped.find("\\|")) != std::string::npos) unescaped.replace(pos, 2, "/");
    const std::vector<std::string> cells = absl::StrSplit(unescaped, '|');
    if (cells.size() < 5) continue;
    const std::string name(absl::StripAsciiWhitespace(absl::StripPrefix(absl::StripSuffix(
        absl::StripAsciiWhitespace(cells[1]), "`"), "`")));
    DocumentedFamily family;
    family.type = std::string(absl::StripAsciiWhitespace(cells[2]));
    family.type = family.type.substr(0, family.type.find(' '));  // "gauge (1)" -> "gauge"
    for (absl::string_view part : absl::StrSplit(cells[3], ',', absl::SkipWhitespace())) {
      const std::string text(part);
      std::vector<std::string> names;
      for (auto it = std::sregex_iterator(text.begin(), text.end(), backticked); it != std::sregex_iterator(); ++it) {
        names.push_back((*it)[1]);
      }
      if (names.empty()) continue;
      std::set<std::string>& allowed = family.labels[names[0]];
      if (absl::StrContains(text, "=")) allowed.insert(names.begin() + 1, names.end());
    }
    families[name] = family;
  }
  return families;
}

TEST(MetricsRegistryTest, EveryDocumentedFamilyIsExportedWithItsTypeAndLabels) {
  const std::map<std::string, DocumentedFamily> documented = ReadMetricsDoc();
  ASSERT_GE(documented.size(), 20u);
  ServerMetrics metrics;
  FakeEngine engine;
  engine.pool = {4096, 100, 10};
  metrics.AttachEngine(&engine, RandomDescription(), "1.0.0");
  // One observation of everything, so that every family has samples.
  auto request = metrics.StartRequest("kivi-k4v4");
  request.OnTokens(1, 0.1);
  request.OnTokens(1, 0.2);
  Timings timings;
  timings.queue_seconds = 0.01;
  timings.time_to_first_token_seconds = 0.1;
  timings.total_seconds = 0.2;
  request.OnEnd(FinishReason::kLength, 7, timings);
  metrics.OnStep(StepInfo{true, 1, 7, 0.01});
  metrics.OnPreemptions(1);
  metrics.CountError("INVALID_ARGUMENT");
  const std::string text = metrics.ScrapeText();

  std::map<std::string, std::string> exported_types;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (!absl::StartsWith(line, "# TYPE ")) continue;
    const std::vector<std::string> parts = absl::StrSplit(line, ' ');
    ASSERT_EQ(parts.size(), 4u) << line;
    exported_types[parts[2]] = parts[3];
  }
  for (const auto& [name, family] : documented) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(exported_types.count(name)) << "documented but not exported";
    EXPECT_EQ(exported_types[name], family.type);
  }
  for (const auto& [name, type] : exported_types) {
    EXPECT_TRUE(documented.count(name)) << name << " is exported but not in docs/metrics.md";
  }
  for (const Sample& s : ParseExposition(text)) {
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_count", "_sum"}) {
      if (!documented.count(family) && absl::EndsWith(family, suffix)) {
        family = family.substr(0, family.size() - std::string(suffix).size());
      }
    }
    ASSERT_TRUE(documented.count(family)) << s.name;
    const DocumentedFamily& doc = documented.at(family);
    std::set<std::string> names;
    for (const auto& [k, v] : s.labels) {
      if (k == "le" && doc.type == "histogram") continue;
      names.insert(k);
      const auto allowed = doc.labels.find(k);
      ASSERT_NE(allowed, doc.labels.end()) << s.name << " has undocumented label " << k;
      if (!allowed->second.empty()) {
        EXPECT_TRUE(allowed->second.count(v)) << s.name << " " << k << "=" << v;
      }
    }
    EXPECT_EQ(names.size(), doc.labels.size()) << s.name;
  }
}

TEST(MetricsHttpServerTest, ServesTheRenderedTextAtMetricsOnly) {
  std::atomic<int> renders{0};
  const std::string body = absl::StrCat("squat_test_value ", UniformInt(0, 1 << 30), "\n");
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, [&] {
    ++renders;
    return body;
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*server)->url(), absl::StrCat("http://127.0.0.1:", port, "/metrics"));

  for (int i = 1; i <= 2; ++i) {
    const HttpResponse ok = HttpGet(port, i == 1 ? "/metrics" : "/metrics?x=1");
    EXPECT_EQ(ok.status, 200);
    EXPECT_EQ(ok.body, body);
    EXPECT_TRUE(absl::StrContains(ok.headers, "Content-Type: text/plain; version=0.0.4")) << ok.headers;
    EXPECT_TRUE(absl::StrContains(ok.headers, absl::StrCat("Content-Length: ", body.size()))) << ok.headers;
    EXPECT_EQ(renders.load(), i);
  }
  EXPECT_EQ(HttpGet(port, "/").status, 404);
  EXPECT_EQ(HttpGet(port, "/metricsx").status, 404);
  EXPECT_EQ(HttpRequest(port, "POST", "/metrics").status, 405);
  const HttpResponse head = HttpRequest(port, "HEAD", "/metrics");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(renders.load(), 3);

  // A second server cannot take the same port.
  auto clash = MetricsHttpServer::Start("127.0.0.1", port, [] { return std::string(); });
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(clash.status().message(), std::to_string(port))) << clash.status();
  EXPECT_EQ(MetricsHttpServer::Start("localhost", 0, [] { return std::string(); }).status().code(),
            absl::StatusCode::kInvalidArgument);

  server->reset();  // stops and closes the port
  EXPECT_EQ(HttpGet(port, "/metrics").status, 0);
}

}  // namespace
