#include "server/metrics.h"

#include <array>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"

namespace squat::server {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Buckets of docs/metrics.md.
const Histogram::BucketBoundaries& LatencyBuckets() {  // 1 ms .. 60 s
  static const Histogram::BucketBoundaries buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1,    2.5,   5,
                                                      10,    20,     30,    60};
  return buckets;
}
const Histogram::BucketBoundaries& StepBuckets() {  // 0.5 ms .. 5 s
  static const Histogram::BucketBoundaries buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025,  0.05,  0.1,    0.25,  0.5,
                                                      1,      2.5,   5};
  return buckets;
}
const Histogram::BucketBoundaries& CountBuckets() {  // powers of two 1 .. 4096
  static const Histogram::BucketBoundaries buckets = [] {
    Histogram::BucketBoundaries b;
    for (double v = 1; v <= 4096; v *= 2) b.push_back(v);
    return b;
  }();
  return buckets;
}

// The finish reasons of requests_total, in FinishReason order from kLength.
constexpr std::array<FinishReason, 5> kFinishReasons = {
    FinishReason::kLength, FinishReason::kStop, FinishReason::kEos, FinishReason::kCancelled,
    FinishReason::kError};

size_t FinishReasonIndex(FinishReason reason) {
  for (size_t i = 0; i < kFinishReasons.size(); ++i) {
    if (kFinishReasons[i] == reason) return i;
  }
  return kFinishReasons.size() - 1;  // kNone never ends a request; count it as an error
}

// Codes whose series exist from the start, so that rate() sees their first increment.
constexpr const char* kCommonErrorCodes[] = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED",
                                             "UNAVAILABLE",      "DEADLINE_EXCEEDED",
                                             "CANCELLED",        "INTERNAL"};

}  // namespace

// Every family of docs/metrics.md; the registry owns them.
struct ServerMetrics::Families {
  explicit Families(prometheus::Registry& r)
      : requests_running(prometheus::BuildGauge()
                             .Name("squat_requests_running")
                             .Help("Sequences holding KV pages")
                             .Register(r)
                             .Add({})),
        requests_waiting(prometheus::BuildGauge()
                             .Name("squat_requests_waiting")
                             .Help("Accepted requests not running (new or preempted)")
                             .Register(r)
                             .Add({})),
        kv_cache_usage_ratio(prometheus::BuildGauge()
                                 .Name("squat_kv_cache_usage_ratio")
                                 .Help("Used pages / all pages of the KV pool (0..1)")
                                 .Register(r)
                                 .Add({})),
        kv_cache_bytes(prometheus::BuildGauge()
                           .Name("squat_kv_cache_bytes")
                           .Help("KV pool bytes by state (used, free)")
                           .Register(r)),
        kv_cache_used_bytes(kv_cache_bytes.Add({{"state", "used"}})),
        kv_cache_free_bytes(kv_cache_bytes.Add({{"state", "free"}})),
        kv_cache_tokens(prometheus::BuildGauge()
                            .Name("squat_kv_cache_tokens")
                            .Help("Tokens of one KV format the whole pool holds")
                            .Register(r)),
        kv_bytes_per_token(prometheus::BuildGauge()
                               .Name("squat_kv_bytes_per_token")
                               .Help("Stored KV bytes per token of a format, all layers, K+V")
                               .Register(r)),
        kv_compression_ratio(prometheus::BuildGauge()
                                 .Name("squat_kv_compression_ratio")
                                 .Help("Bytes per token of the fp16 (full-precision) format / this format's")
                                 .Register(r)),
        memory_bytes(prometheus::BuildGauge()
                         .Name("squat_gpu_memory_bytes")
                         .Help("Device memory by use (weights, kv_pool, workspace); host memory on CPU")
                         .Register(r)),
        weights_bytes(memory_bytes.Add({{"kind", "weights"}})),
        kv_pool_bytes(memory_bytes.Add({{"kind", "kv_pool"}})),
        workspace_bytes(memory_bytes.Add({{"kind", "workspace"}})),
        model_info(prometheus::BuildGauge()
                       .Name("squat_model_info")
                       .Help("What is served (value 1)")
                       .Register(r)),
        prompt_tokens(prometheus::BuildCounter()
                          .Name("squat_prompt_tokens_total")
                          .Help("Prompt tokens of finished requests")
                          .Register(r)
                          .Add({})),
        generation_tokens(prometheus::BuildCounter()
                              .Name("squat_generation_tokens_total")
                              .Help("Generated tokens")
                              .Register(r)),
        requests(prometheus::BuildCounter()
                     .Name("squat_requests_total")
                     .Help("Finished requests by finish reason and KV format")
                     .Register(r)),
        preemptions(prometheus::BuildCounter()
                        .Name("squat_preemptions_total")
                        .Help("Sequences preempted (recomputed later)")
                        .Register(r)
                        .Add({})),
        request_errors(prometheus::BuildCounter()
                           .Name("squat_request_errors_total")
                           .Help("Generation calls refused or failed, by gRPC status code")
                           .Register(r)),
        time_to_first_token(prometheus::BuildHistogram()
                                .Name("squat_time_to_first_token_seconds")
                                .Help("Arrival to first token")
                                .Register(r)),
        inter_token_latency(prometheus::BuildHistogram()
                                .Name("squat_inter_token_latency_seconds")
                                .Help("Between consecutive tokens of a request")
                                .Register(r)),
        e2e_request_latency(prometheus::BuildHistogram()
                                .Name("squat_e2e_request_latency_seconds")
                                .Help("Arrival to final event")
                                .Register(r)),
        request_queue_time(prometheus::BuildHistogram()
                               .Name("squat_request_queue_time_seconds")
                               .Help("Arrival to first scheduled")
                               .Register(r)
                               .Add({}, LatencyBuckets())),
        step_duration(prometheus::BuildHistogram()
                          .Name("squat_step_duration_seconds")
                          .Help("One engine step (prefill: the step fed any prompt chunk)")
                          .Register(r)),
        batch_size(prometheus::BuildHistogram()
                       .Name("squat_batch_size")
                       .Help("Sequences in one engine step")
                       .Register(r)),
        batch_tokens(prometheus::BuildHistogram()
                         .Name("squat_batch_tokens")
                         .Help("Tokens fed in one engine step")
                         .Register(r)) {
    for (const char* phase : {"prefill", "decode"}) {
      const bool prefill = phase[0] == 'p';
      step_duration_by_phase[prefill] = &step_duration.Add({{"phase", phase}}, StepBuckets());
      batch_size_by_phase[prefill] = &batch_size.Add({{"phase", phase}}, CountBuckets());
      batch_tokens_by_phase[prefill] = &batch_tokens.Add({{"phase", phase}}, CountBuckets());
    }
    for (const char* code : kCommonErrorCodes) request_errors.Add({{"code", code}});
  }

  Gauge& requests_running;
  Gauge& requests_waiting;
  Gauge& kv_cache_usage_ratio;
  Family<Gauge>& kv_cache_bytes;
  Gauge& kv_cache_used_bytes;
  Gauge& kv_cache_free_bytes;
  Family<Gauge>& kv_cache_tokens;
  Family<Gauge>& kv_bytes_per_token;
  Family<Gauge>& kv_compression_ratio;
  Family<Gauge>& memory_bytes;
  Gauge& weights_bytes;
  Gauge& kv_pool_bytes;
  Gauge& workspace_bytes;
  Family<Gauge>& model_info;
  Counter& prompt_tokens;
  Family<Counter>& generation_tokens;
  Family<Counter>& requests;
  Counter& preemptions;
  Family<Counter>& request_errors;
  Family<Histogram>& time_to_first_token;
  Family<Histogram>& inter_token_latency;
  Family<Histogram>& e2e_request_latency;
  Histogram& request_queue_time;
  Family<Histogram>& step_duration;
  Family<Histogram>& batch_size;
  Family<Histogram>& batch_tokens;
  // Indexed by "prefill" (true) / "decode" (false).
  Histogram* step_duration_by_phase[2] = {};
  Histogram* batch_size_by_phase[2] = {};
  Histogram* batch_tokens_by_phase[2] = {};
};

// The series a request of one KV format feeds.
struct RequestMetrics::FormatSeries {
  Counter* generation_tokens = nullptr;
  Histogram* time_to_first_token = nullptr;
  Histogram* inter_token_latency = nullptr;
  Histogram* e2e_request_latency = nullptr;
  std::array<Counter*, kFinishReasons.size()> requests{};  // by FinishReasonIndex
};

void RequestMetrics::OnTokens(int64_t tokens, double time_seconds) {
  if (tokens <= 0) return;
  series_->generation_tokens->Increment(static_cast<double>(tokens));
  if (last_token_time_ >= 0) series_->inter_token_latency->Observe(time_seconds - last_token_time_);
  last_token_time_ = time_seconds;
}

void RequestMetrics::OnEnd(FinishReason reason, int32_t prompt_tokens, const Timings& timings) {
  series_->requests[FinishReasonIndex(reason)]->Increment();
  owner_->families_->prompt_tokens.Increment(prompt_tokens);
  if (timings.time_to_first_token_seconds > 0) {
    series_->time_to_first_token->Observe(timings.time_to_first_token_seconds);
  }
  series_->e2e_request_latency->Observe(timings.total_seconds);
  if (timings.queue_seconds > 0) owner_->families_->request_queue_time.Observe(timings.queue_seconds);
}

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {}

ServerMetrics::~ServerMetrics() = default;

RequestMetrics::FormatSeries* ServerMetrics::SeriesFor(const std::string& format) {
  std::lock_guard<std::mutex> lock(series_mu_);
  std::unique_ptr<RequestMetrics::FormatSeries>& slot = series_[format];
  if (slot == nullptr) {
    auto series = std::make_unique<RequestMetrics::FormatSeries>();
    const prometheus::Labels labels = {{"format", format}};
    Families& f = *families_;
    series->generation_tokens = &f.generation_tokens.Add(labels);
    series->time_to_first_token = &f.time_to_first_token.Add(labels, LatencyBuckets());
    series->inter_token_latency = &f.inter_token_latency.Add(labels, StepBuckets());
    series->e2e_request_latency = &f.e2e_request_latency.Add(labels, LatencyBuckets());
    for (size_t i = 0; i < kFinishReasons.size(); ++i) {
      series->requests[i] =
          &f.requests.Add({{"finish_reason", FinishReasonName(kFinishReasons[i])}, {"format", format}});
    }
    slot = std::move(series);
  }
  return slot.get();
}

RequestMetrics ServerMetrics::StartRequest(const std::string& format) {
  return RequestMetrics(this, SeriesFor(format));
}

void ServerMetrics::CountError(const std::string& code) {
  families_->request_errors.Add({{"code", code}}).Increment();
}

void ServerMetrics::AttachEngine(const Engine* engine, const ModelDescription& description,
                                 const std::string& version) {
  Families& f = *families_;
  double fp16_bytes_per_token = 0;
  std::string default_format;
  for (const KvFormatDescription& format : description.kv_formats) {
    if (format.method == "fp16") fp16_bytes_per_token = format.bytes_per_token;
  }
  for (const KvFormatDescription& format : description.kv_formats) {
    const std::string& label = format.label;
    const prometheus::Labels labels = {{"format", label}};
    f.kv_cache_tokens.Add(labels).Set(static_cast<double>(format.capacity_tokens));
    f.kv_bytes_per_token.Add(labels).Set(format.bytes_per_token);
    if (fp16_bytes_per_token > 0 && format.bytes_per_token > 0) {
      f.kv_compression_ratio.Add(labels).Set(fp16_bytes_per_token / format.bytes_per_token);
    }
    // Counters of every listed format exist from the start (rate() misses a first
    // increment); the default format's histograms too, the others' on first use.
    f.generation_tokens.Add(labels);
    for (FinishReason reason : kFinishReasons) {
      f.requests.Add({{"finish_reason", FinishReasonName(reason)}, {"format", label}});
    }
    if (format.is_default) {
      default_format = label;
      SeriesFor(label);
    }
  }
  f.weights_bytes.Set(static_cast<double>(description.weight_bytes));
  f.workspace_bytes.Set(static_cast<double>(description.workspace_bytes));
  f.model_info
      .Add({{"model", description.model_name},
            {"device", description.device},
            {"dtype", description.dtype},
            {"kv_format", default_format},
            {"version", version}})
      .Set(1);
  std::lock_guard<std::mutex> lock(engine_mu_);
  engine_ = engine;
}

void ServerMetrics::DetachEngine() {
  std::lock_guard<std::mutex> lock(engine_mu_);
  engine_ = nullptr;
}

void ServerMetrics::OnStep(const StepInfo& step) {
  Families& f = *families_;
  f.step_duration_by_phase[step.prefill]->Observe(step.duration_seconds);
  f.batch_size_by_phase[step.prefill]->Observe(step.num_sequences);
  f.batch_tokens_by_phase[step.prefill]->Observe(static_cast<double>(step.num_tokens));
}

void ServerMetrics::OnPreemptions(int64_t sequences) {
  families_->preemptions.Increment(static_cast<double>(sequences));
}

void ServerMetrics::RefreshSnapshots() const {
  std::lock_guard<std::mutex> lock(engine_mu_);
  if (engine_ == nullptr) return;
  Families& f = *families_;
  const EngineStats stats = engine_->Stats();
  f.requests_running.Set(static_cast<double>(stats.running));
  f.requests_waiting.Set(static_cast<double>(stats.waiting));
  const KvPoolUsage pool = engine_->PoolUsage();
  const double used = static_cast<double>(pool.used_pages * pool.page_bytes);
  const double total = static_cast<double>(pool.total_pages * pool.page_bytes);
  f.kv_cache_usage_ratio.Set(pool.total_pages > 0 ? static_cast<double>(pool.used_pages) /
                                                        static_cast<double>(pool.total_pages)
                                                  : 0.0);
  f.kv_cache_used_bytes.Set(used);
  f.kv_cache_free_bytes.Set(total - used);
  f.kv_pool_bytes.Set(total);
}

std::vector<prometheus::MetricFamily> ServerMetrics::Collect() const {
  RefreshSnapshots();
  return registry_->Collect();
}

std::string ServerMetrics::ScrapeText() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

}  // namespace squat::server
