// End to end: the real squat-server (JSON logs, one running sequence, a queue of one) gets a
// known mix of requests over gRPC: successes in four KV formats ending by length or by a stop
// token, invalid requests, a full queue, a client cancellation, a passed deadline and a refusal
// while draining. /metrics, scraped over plain HTTP, must count exactly what the client saw
// (and, for the calls the client cut short, what the server's final log line of the request
// says); promtool must accept the scrape; every log line must be one JSON object, with one
// final line per request.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/metrics_server_support.h"
#include "tests/metrics_test_support.h"
#include "tests/process_test_support.h"

namespace {

using namespace squat::testing_support;
using nlohmann::json;
using squat::v1::GenerateResponse;
using squat::v1::GenerateStreamResponse;

constexpr std::chrono::seconds kTestTimeout(120);
constexpr std::chrono::seconds kLogLineTimeout(30);
constexpr int kMaxTokensLimit = 4096;
// Tokens of a request that is cut short: the context length (2048) caps it, which is seconds of
// decoding in the squat formats even on a fast machine.
constexpr int kLong = 4000;

struct KvVariant {
  std::string method;  // empty: the server default
  int bits;            // 0: the default
  std::string label;   // docs/metrics.md: fp16 or <method>-k<K>v<V>
};
// The server runs with its default format, squat K2V2.
const std::vector<KvVariant> kVariants = {
    {"", 0, "squat-k2v2"}, {"fp16", 0, "fp16"}, {"kivi", 4, "kivi-k4v4"}, {"squat-post", 2, "squat-post-k2v2"}};

// One request the engine accepted, as far as the test knows it.
struct Outcome {
  std::string id;
  std::string format;
  std::string reason;  // docs/metrics.md finish_reason
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  bool has_ttft = false;
  bool was_queued = false;  // scheduled at least once
  std::string status = "OK";  // the call's gRPC status code name
};

std::string RandomId(const std::string& kind) {
  return absl::StrCat("m-", kind, "-", absl::Hex(Rng()(), absl::kZeroPad16));
}

int RandomInt(int lo, int hi) { return lo + static_cast<int>(Rng()() % static_cast<uint64_t>(hi - lo + 1)); }

std::string ReasonName(squat::v1::FinishReason reason) {
  switch (reason) {
    case squat::v1::FINISH_REASON_LENGTH: return "length";
    case squat::v1::FINISH_REASON_STOP: return "stop";
    case squat::v1::FINISH_REASON_EOS: return "eos";
    case squat::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case squat::v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

std::vector<json> ParseLogLines(const std::string& log, bool* all_json) {
  std::vector<json> lines;
  *all_json = true;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_object() || !parsed.contains("time") || !parsed.contains("level") || !parsed.contains("msg")) {
      ADD_FAILURE() << "log line is not a JSON object with time, level, msg: " << line;
      *all_json = false;
      continue;
    }
    lines.push_back(std::move(parsed));
  }
  return lines;
}

bool IsFinalLine(const json& line) {
  const std::string msg = line.value("msg", "");
  return absl::EndsWith(msg, " finished") || absl::EndsWith(msg, " rejected");
}

class MetricsE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<MetricsServer>(std::vector<std::string>{
        "--log-format", "json", "--max-num-seqs", "1", "--max-waiting", "1", "--kv-pool-mib", "64",
        "--max-tokens-limit", std::to_string(kMaxTokensLimit), "--drain-timeout-s", "60"});
    ASSERT_TRUE(server_->WaitServing()) << "server did not become SERVING; log:\n" << server_->Log();
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      const std::string log = server_->Log();
      std::fprintf(stderr, "---- squat-server log (tail) ----\n%s\n",
                   log.substr(log.size() > 12000 ? log.size() - 12000 : 0).c_str());
    }
    server_.reset();
  }

  // The server's final log line of request `id`, once it is there.
  std::optional<json> WaitFinalLine(const std::string& id) {
    const auto give_up = std::chrono::steady_clock::now() + kLogLineTimeout;
    do {
      for (absl::string_view line : absl::StrSplit(server_->Log(), '\n', absl::SkipEmpty())) {
        json parsed = json::parse(line, nullptr, false);
        if (parsed.is_object() && parsed.value("request_id", "") == id && IsFinalLine(parsed)) return parsed;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } while (std::chrono::steady_clock::now() < give_up);
    ADD_FAILURE() << "no final log line for " << id;
    return std::nullopt;
  }

  // A request the client cut short: what the engine did comes from its final log line.
  void RecordFromLog(const std::string& id, const std::string& format, const std::string& status) {
    const std::optional<json> line = WaitFinalLine(id);
    if (!line.has_value()) return;
    Outcome o{id, format, line->value("finish_reason", ""), line->value("prompt_tokens", int64_t{0}),
              line->value("completion_tokens", int64_t{0}), line->value("ttft_seconds", 0.0) > 0,
              line->value("queue_seconds", 0.0) > 0, status};
    EXPECT_EQ(o.reason, "cancelled") << line->dump();
    EXPECT_GT(o.prompt_tokens, 0);
    outcomes_.push_back(o);
  }

  void RecordResponse(const std::string& id, const std::string& format, const GenerateResponse& r) {
    outcomes_.push_back({id, format, ReasonName(r.finish_reason()), r.usage().prompt_tokens(), r.token_ids_size(),
                         r.timings().time_to_first_token_seconds() > 0, r.timings().queue_seconds() > 0});
    EXPECT_EQ(r.usage().completion_tokens(), static_cast<uint32_t>(r.token_ids_size()));
  }

  void RecordStream(const std::string& id, const std::string& format, const StreamResult& s) {
    const GenerateStreamResponse& last = s.last;
    outcomes_.push_back({id, format, ReasonName(last.finish_reason()), last.usage().prompt_tokens(), s.tokens,
                         last.timings().time_to_first_token_seconds() > 0, last.timings().queue_seconds() > 0});
    EXPECT_EQ(last.usage().completion_tokens(), static_cast<uint32_t>(s.tokens));
  }

  void ExpectError(const grpc::Status& status, grpc::StatusCode code, const std::string& code_name) {
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    errors_[code_name] += 1;
  }

  Watchdog watchdog_{"metrics_e2e_test", kTestTimeout};
  std::unique_ptr<MetricsServer> server_;
  std::vector<Outcome> outcomes_;
  std::vector<std::string> call_ids_;  // every call with a valid id, accepted or not
  std::map<std::string, double> errors_ = {{"INVALID_ARGUMENT", 0}, {"RESOURCE_EXHAUSTED", 0},
                                           {"UNAVAILABLE", 0},      {"DEADLINE_EXCEEDED", 0},
                                           {"CANCELLED", 0},        {"INTERNAL", 0}};
};

TEST_F(MetricsE2ETest, ScrapeCountsWhatTheClientSawAndLogsAreJson) {
  auto& stub = server_->stub();

  // Successes: every KV format, unary and streamed, ending by length.
  for (int i = 0; i < 8; ++i) {
    const KvVariant& v = kVariants[static_cast<size_t>(i) % kVariants.size()];
    const std::string id = RandomId("ok");
    call_ids_.push_back(id);
    const int max_tokens = RandomInt(2, 8);
    const auto request = MakeRequest(id, RandomPrompt(), max_tokens, v.method, v.bits);
    if (RandomInt(0, 1) == 0) {
      GenerateResponse response;
      const grpc::Status status = Generate(stub, request, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(response.token_ids_size(), max_tokens);
      RecordResponse(id, v.label, response);
    } else {
      const StreamResult result = Stream(stub, request);
      ASSERT_TRUE(result.status.ok()) << result.status.error_message();
      EXPECT_EQ(result.tokens, max_tokens);
      RecordStream(id, v.label, result);
    }
  }

  // A stop token: greedy decoding picks the same first token again, which is now a stop id.
  {
    const std::string prompt = RandomPrompt();
    const std::string first_id = RandomId("greedy");
    auto request = MakeRequest(first_id, prompt, 1);
    request.mutable_sampling()->set_temperature(0);
    GenerateResponse first;
    ASSERT_TRUE(Generate(stub, request, &first).ok());
    ASSERT_EQ(first.token_ids_size(), 1);
    call_ids_.push_back(first_id);
    RecordResponse(first_id, "squat-k2v2", first);
    const std::string stop_id = RandomId("stop");
    request.set_request_id(stop_id);
    request.mutable_sampling()->set_max_tokens(6);
    request.mutable_sampling()->add_stop_token_ids(first.token_ids(0));
    GenerateResponse stopped;
    ASSERT_TRUE(Generate(stub, request, &stopped).ok());
    EXPECT_EQ(stopped.finish_reason(), squat::v1::FINISH_REASON_STOP);
    EXPECT_EQ(stopped.token_ids_size(), 0);
    call_ids_.push_back(stop_id);
    RecordResponse(stop_id, "squat-k2v2", stopped);
  }

  // Invalid requests: refused before or by the engine, never counted as requests.
  {
    std::vector<squat::v1::GenerateRequest> invalid;
    invalid.push_back(MakeRequest(RandomId("empty"), "", 4));
    invalid.push_back(MakeRequest(RandomId("method"), RandomPrompt(), 4, "kv" + RandomId("x").substr(2, 6)));
    invalid.push_back(MakeRequest(RandomId("long"), RandomPrompt(), kMaxTokensLimit + RandomInt(1, 100)));
    invalid.push_back(MakeRequest(RandomId("bits"), RandomPrompt(), 4, "kivi", 3));
    for (const auto& request : invalid) {
      call_ids_.push_back(request.request_id());
      GenerateResponse response;
      ExpectError(Generate(stub, request, &response), grpc::StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT");
    }
    // An id that would garble the logs: refused, logged under a generated id.
    GenerateResponse response;
    ExpectError(Generate(stub, MakeRequest("has space", RandomPrompt(), 4), &response),
                grpc::StatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT");
  }

  // A full queue: A runs (the only running slot), B waits (the only waiting slot), C is refused;
  // then the client cancels A and B runs to its end.
  {
    const std::string a_id = RandomId("running"), b_id = RandomId("waiting"), c_id = RandomId("refused");
    call_ids_.insert(call_ids_.end(), {a_id, b_id, c_id});
    grpc::ClientContext a_context;
    auto a = stub.GenerateStream(&a_context, MakeRequest(a_id, RandomPrompt(), kLong));
    GenerateStreamResponse chunk;
    ASSERT_TRUE(a->Read(&chunk));  // A is running
    grpc::ClientContext b_context;
    const int b_tokens = RandomInt(3, 6);
    auto b = stub.GenerateStream(&b_context, MakeRequest(b_id, RandomPrompt(), b_tokens, "kivi", 4));
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool b_waiting = false;
    while (!b_waiting && std::chrono::steady_clock::now() < give_up) {
      b_waiting = FindSample(ParseExposition(server_->Scrape()), "squat_requests_waiting") == 1.0;
      if (!b_waiting) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(b_waiting) << "B never showed as waiting";
    GenerateResponse refused;
    ExpectError(Generate(stub, MakeRequest(c_id, RandomPrompt(), 2), &refused), grpc::StatusCode::RESOURCE_EXHAUSTED,
                "RESOURCE_EXHAUSTED");

    a_context.TryCancel();
    while (a->Read(&chunk)) {
    }
    ExpectError(a->Finish(), grpc::StatusCode::CANCELLED, "CANCELLED");
    StreamResult b_result;
    while (b->Read(&chunk)) {
      b_result.tokens += chunk.token_ids_size();
      b_result.last = chunk;
    }
    ASSERT_TRUE(b->Finish().ok());
    EXPECT_EQ(b_result.tokens, b_tokens);
    RecordStream(b_id, "kivi-k4v4", b_result);
    RecordFromLog(a_id, "squat-k2v2", "CANCELLED");
  }

  // A client cancellation mid-stream, after a few tokens.
  {
    const std::string id = RandomId("cancel");
    call_ids_.push_back(id);
    grpc::ClientContext context;
    auto reader = stub.GenerateStream(&context, MakeRequest(id, RandomPrompt(), kLong, "squat-post", 2));
    const int read = RandomInt(2, 4);
    GenerateStreamResponse chunk;
    for (int i = 0; i < read; ++i) ASSERT_TRUE(reader->Read(&chunk));
    context.TryCancel();
    while (reader->Read(&chunk)) {
    }
    ExpectError(reader->Finish(), grpc::StatusCode::CANCELLED, "CANCELLED");
    RecordFromLog(id, "squat-post-k2v2", "CANCELLED");
    EXPECT_GE(outcomes_.back().completion_tokens, read);
  }

  // A deadline that passes mid-generation.
  {
    const std::string id = RandomId("deadline");
    call_ids_.push_back(id);
    GenerateResponse response;
    const grpc::Status status = Generate(stub, MakeRequest(id, RandomPrompt(), kLong), &response,
                                         std::chrono::milliseconds(500));
    ExpectError(status, grpc::StatusCode::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED");
    RecordFromLog(id, "squat-k2v2", "DEADLINE_EXCEEDED");
  }

  // Every request has ended (their final log lines are written after the last event).
  for (const Outcome& o : outcomes_) ASSERT_TRUE(WaitFinalLine(o.id).has_value());
  const std::string scrape = server_->Scrape();
  const std::vector<Sample> samples = ParseExposition(scrape);

  // Request counters and histograms, per format and finish reason.
  std::set<std::string> formats;
  for (const KvVariant& v : kVariants) formats.insert(v.label);
  double prompt_total = 0, prefill_tokens = 0, scheduled = 0, queued = 0;
  for (const std::string& format : formats) {
    SCOPED_TRACE(format);
    std::map<std::string, double> by_reason = {{"length", 0}, {"stop", 0}, {"eos", 0}, {"cancelled", 0}, {"error", 0}};
    double tokens = 0, ttft = 0, itl = 0, e2e = 0;
    for (const Outcome& o : outcomes_) {
      if (o.format != format) continue;
      by_reason[o.reason] += 1;
      tokens += static_cast<double>(o.completion_tokens);
      ttft += o.has_ttft;
      itl += static_cast<double>(std::max<int64_t>(0, o.completion_tokens - 1));
      e2e += 1;
    }
    const Labels labels = {{"format", format}};
    for (const auto& [reason, count] : by_reason) {
      EXPECT_EQ(SampleValue(samples, "squat_requests_total", {{"finish_reason", reason}, {"format", format}}), count)
          << reason;
    }
    EXPECT_EQ(SampleValue(samples, "squat_generation_tokens_total", labels), tokens);
    EXPECT_EQ(SampleValue(samples, "squat_time_to_first_token_seconds_count", labels), ttft);
    EXPECT_EQ(SampleValue(samples, "squat_inter_token_latency_seconds_count", labels), itl);
    EXPECT_EQ(SampleValue(samples, "squat_e2e_request_latency_seconds_count", labels), e2e);
    EXPECT_EQ(SampleValue(samples, "squat_time_to_first_token_seconds_bucket", {{"format", format}, {"le", "+Inf"}}),
              ttft);
  }
  for (const Outcome& o : outcomes_) {
    prompt_total += static_cast<double>(o.prompt_tokens);
    queued += o.was_queued;
    if (o.was_queued) {
      scheduled += 1;
      prefill_tokens += static_cast<double>(o.prompt_tokens);
    }
  }
  EXPECT_EQ(SumSamples(samples, "squat_requests_total"), static_cast<double>(outcomes_.size()));
  EXPECT_EQ(SampleValue(samples, "squat_prompt_tokens_total"), prompt_total);
  EXPECT_EQ(SampleValue(samples, "squat_request_queue_time_seconds_count"), queued);
  for (const auto& [code, count] : errors_) {
    EXPECT_EQ(SampleValue(samples, "squat_request_errors_total", {{"code", code}}), count) << code;
  }
  double errors = 0;
  for (const auto& [code, count] : errors_) errors += count;
  EXPECT_EQ(SumSamples(samples, "squat_request_errors_total"), errors);  // no other code

  // Engine steps: one sequence at a time, every prompt fed in one prefill step, no preemption.
  EXPECT_EQ(SampleValue(samples, "squat_preemptions_total"), 0);
  EXPECT_EQ(SampleValue(samples, "squat_batch_size_count", {{"phase", "prefill"}}), scheduled);
  EXPECT_EQ(SampleValue(samples, "squat_batch_size_sum", {{"phase", "prefill"}}), scheduled);
  EXPECT_EQ(SampleValue(samples, "squat_batch_tokens_sum", {{"phase", "prefill"}}), prefill_tokens);
  const double decode_steps = SampleValue(samples, "squat_batch_size_count", {{"phase", "decode"}});
  EXPECT_GT(decode_steps, 0);
  EXPECT_EQ(SampleValue(samples, "squat_batch_size_sum", {{"phase", "decode"}}), decode_steps);
  EXPECT_EQ(SampleValue(samples, "squat_batch_tokens_sum", {{"phase", "decode"}}), decode_steps);
  EXPECT_EQ(SampleValue(samples, "squat_step_duration_seconds_count", {{"phase", "decode"}}), decode_steps);

  // Snapshot gauges of an idle server, against GetModelInfo.
  squat::v1::ModelInfo info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub.GetModelInfo(&context, squat::v1::GetModelInfoRequest(), &info).ok());
  }
  EXPECT_EQ(SampleValue(samples, "squat_requests_running"), 0);
  EXPECT_EQ(SampleValue(samples, "squat_requests_waiting"), 0);
  EXPECT_EQ(SampleValue(samples, "squat_kv_cache_usage_ratio"), 0);
  EXPECT_EQ(SampleValue(samples, "squat_kv_cache_bytes", {{"state", "used"}}), 0);
  EXPECT_EQ(SampleValue(samples, "squat_kv_cache_bytes", {{"state", "free"}}), static_cast<double>(info.kv_pool_bytes()));
  EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "kv_pool"}}), static_cast<double>(info.kv_pool_bytes()));
  EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "weights"}}), static_cast<double>(info.weight_bytes()));
  // The activation estimate (allocated as needed on CPU), as GetModelInfo reports it.
  EXPECT_GT(info.workspace_bytes(), 0u);
  EXPECT_EQ(SampleValue(samples, "squat_gpu_memory_bytes", {{"kind", "workspace"}}),
            static_cast<double>(info.workspace_bytes()));
  double full_bytes = 0;
  for (const auto& f : info.kv_formats()) {
    if (f.method() == "fp16") full_bytes = f.bytes_per_token();
  }
  ASSERT_GT(full_bytes, 0);
  for (const auto& f : info.kv_formats()) {
    const std::string label =
        f.method() == "fp16" ? "fp16" : absl::StrCat(f.method(), "-k", f.k_bits(), "v", f.v_bits());
    const Labels labels = {{"format", label}};
    EXPECT_EQ(SampleValue(samples, "squat_kv_bytes_per_token", labels), f.bytes_per_token()) << label;
    EXPECT_EQ(SampleValue(samples, "squat_kv_cache_tokens", labels), static_cast<double>(f.capacity_tokens())) << label;
    EXPECT_NEAR(SampleValue(samples, "squat_kv_compression_ratio", labels), full_bytes / f.bytes_per_token(), 1e-9);
  }
  std::vector<Sample> model_info;
  for (const Sample& sample : samples) {
    if (sample.name == "squat_model_info") model_info.push_back(sample);
  }
  ASSERT_EQ(model_info.size(), 1u);
  EXPECT_EQ(model_info[0].value, 1);
  EXPECT_EQ(model_info[0].labels.at("model"), info.model_name());
  EXPECT_EQ(model_info[0].labels.at("device"), info.device());
  EXPECT_EQ(model_info[0].labels.at("dtype"), info.dtype());
  EXPECT_EQ(model_info[0].labels.at("kv_format"), "squat-k2v2");
  EXPECT_FALSE(model_info[0].labels.at("version").empty());

  // While draining, new requests are refused with UNAVAILABLE, and counted.
  {
    const std::string d_id = RandomId("drain");
    grpc::ClientContext d_context;
    auto d = stub.GenerateStream(&d_context, MakeRequest(d_id, RandomPrompt(), kLong));
    GenerateStreamResponse chunk;
    ASSERT_TRUE(d->Read(&chunk));
    server_->process().Signal(SIGTERM);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!absl::StrContains(server_->Log(), "received SIGTERM") && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const std::string e_id = RandomId("unavailable");
    call_ids_.insert(call_ids_.end(), {d_id, e_id});
    GenerateResponse refused;
    ExpectError(Generate(stub, MakeRequest(e_id, RandomPrompt(), 2), &refused), grpc::StatusCode::UNAVAILABLE,
                "UNAVAILABLE");
    const std::vector<Sample> draining = ParseExposition(server_->Scrape());
    EXPECT_EQ(SampleValue(draining, "squat_request_errors_total", {{"code", "UNAVAILABLE"}}), 1);
    EXPECT_EQ(SampleValue(draining, "squat_requests_running"), 1);
    d_context.TryCancel();  // the drain ends with D
    while (d->Read(&chunk)) {
    }
    EXPECT_EQ(d->Finish().error_code(), grpc::StatusCode::CANCELLED);
    const std::optional<int> exit_status = server_->process().WaitExit(std::chrono::seconds(60));
    ASSERT_TRUE(exit_status.has_value()) << "server still running after SIGTERM";
    EXPECT_EQ(ExitCodeOf(*exit_status), 0);
  }

  // The log: JSON lines only; one final line per call, with the request's numbers.
  bool all_json = false;
  const std::vector<json> lines = ParseLogLines(server_->Log(), &all_json);
  EXPECT_TRUE(all_json);
  std::map<std::string, std::vector<json>> final_lines;
  int generated_id_rejections = 0;
  for (const json& line : lines) {
    if (!IsFinalLine(line)) continue;
    ASSERT_TRUE(line.contains("request_id")) << line.dump();
    const std::string id = line.at("request_id");
    if (absl::StartsWith(id, "req-")) {
      ++generated_id_rejections;
      EXPECT_TRUE(absl::StrContains(line.value("error", ""), "request_id")) << line.dump();
      continue;
    }
    final_lines[id].push_back(line);
  }
  EXPECT_EQ(generated_id_rejections, 1);
  for (const std::string& id : call_ids_) {
    SCOPED_TRACE(id);
    ASSERT_EQ(final_lines[id].size(), 1u);
    // Every line that names the request carries it as request_id.
    for (const json& line : lines) {
      if (absl::StrContains(line.dump(), id)) {
        EXPECT_EQ(line.value("request_id", ""), id) << line.dump();
      }
    }
  }
  EXPECT_EQ(final_lines.size(), call_ids_.size());
  for (const Outcome& o : outcomes_) {
    SCOPED_TRACE(o.id);
    const json& line = final_lines[o.id].front();
    EXPECT_TRUE(absl::EndsWith(line.value("msg", ""), " finished")) << line.dump();
    EXPECT_EQ(line.value("finish_reason", ""), o.reason);
    EXPECT_EQ(line.value("prompt_tokens", int64_t{-1}), o.prompt_tokens);
    EXPECT_EQ(line.value("completion_tokens", int64_t{-1}), o.completion_tokens);
    EXPECT_EQ(line.value("kv_format", ""), o.format);
    for (const char* key : {"queue_seconds", "ttft_seconds", "total_seconds"}) {
      ASSERT_TRUE(line.contains(key) && line.at(key).is_number()) << key;
    }
    EXPECT_GE(line.at("total_seconds").get<double>(), line.at("ttft_seconds").get<double>());
    EXPECT_EQ(line.value("status", ""), o.status);
  }

  // promtool accepts the scrape.
  const std::string promtool = FindOnPath("promtool");
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool not found on PATH (tools/install_deps.sh installs the Debian package "
                    "'prometheus'); every other check above ran";
  }
  const std::string scrape_path = UniqueTempPath("squat_metrics", "scrape");
  { std::ofstream(scrape_path) << scrape; }
  const std::string out_path = UniqueTempPath("squat_metrics", "promtool");
  const int rc = std::system(absl::StrCat(promtool, " check metrics < ", scrape_path, " > ", out_path, " 2>&1").c_str());
  EXPECT_EQ(rc, 0) << ReadFile(out_path);
  std::remove(scrape_path.c_str());
  std::remove(out_path.c_str());
}

TEST(MetricsFlagsTest, AnExplicitMetricsPortThatIsTakenStopsTheServer) {
  // Hold a port, then ask the server for it.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int taken = ntohs(addr.sin_port);
  ChildProcess server({SQUAT_SERVER_BIN, "--model", SQUAT_TINY_MODEL_DIR, "--address",
                       absl::StrCat("127.0.0.1:", FreeLoopbackPort()), "--metrics-port", std::to_string(taken),
                       "--metrics-address", "127.0.0.1"},
                      ChildOutput::Log(UniqueTempPath("squat_metrics", "taken_log")));
  const std::optional<int> status = server.WaitExit(std::chrono::seconds(30));
  close(fd);
  const std::string log = server.StdoutText();
  ASSERT_TRUE(status.has_value()) << log;
  EXPECT_EQ(ExitCodeOf(*status), 1);
  EXPECT_TRUE(absl::StrContains(log, absl::StrCat("cannot serve metrics on 127.0.0.1:", taken))) << log;
}

TEST(MetricsFlagsTest, UnknownLogFormatIsAUsageError) {
  ChildProcess server({SQUAT_SERVER_BIN, "--model", SQUAT_TINY_MODEL_DIR, "--log-format", "xml"},
                      ChildOutput::Log(UniqueTempPath("squat_metrics", "format_log")));
  const std::optional<int> status = server.WaitExit(std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCodeOf(*status), 2);
  const std::string log = server.StdoutText();
  EXPECT_TRUE(absl::StrContains(log, "--log-format 'xml' is not one of text, json")) << log;
}

}  // namespace
