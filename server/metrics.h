// squat-server's Prometheus metrics; docs/metrics.md is the contract (names, types, labels,
// buckets). Request-level series are fed by the gRPC handlers, engine-level ones through
// EngineObserver (engine thread), and snapshot gauges (running, waiting, KV pool) are read from
// the engine at every scrape. server/metrics_http.h serves ScrapeText() at /metrics.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "runtime/engine/engine.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace squat::server {

class ServerMetrics;

// The series of one generation call, resolved once when the engine accepts it. Not
// thread-safe: one handler thread drives one call.
class RequestMetrics {
 public:
  // `tokens` generated tokens the engine produced `time_seconds` after the request arrived
  // (GenerationEvent::time_seconds): counts them and observes the gap to the previous tokens.
  void OnTokens(int64_t tokens, double time_seconds);
  // The request ended (once): requests_total{finish_reason}, prompt tokens, and the TTFT,
  // end-to-end and queue-time histograms from the engine's timings (TTFT only when a token was
  // sampled, queue time only when the request was scheduled: those timings are 0 otherwise).
  void OnEnd(FinishReason reason, int32_t prompt_tokens, const Timings& timings);

 private:
  friend class ServerMetrics;
  struct FormatSeries;
  RequestMetrics(ServerMetrics* owner, FormatSeries* series) : owner_(owner), series_(series) {}

  ServerMetrics* owner_;
  FormatSeries* series_;
  double last_token_time_ = -1;
};

class ServerMetrics final : public prometheus::Collectable, public EngineObserver {
 public:
  ServerMetrics();
  ~ServerMetrics() override;
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Sets the model's static gauges (memory, formats, model_info) and reads the live ones from
  // `engine` at every scrape until DetachEngine (call it before the engine goes away).
  void AttachEngine(const Engine* engine, const ModelDescription& description,
                    const std::string& version);
  void DetachEngine();

  // A request the engine accepted, in KV format `format` (AcceptedRequest::kv_format).
  RequestMetrics StartRequest(const std::string& format);
  // A generation call ended with a non-OK gRPC status, by code name ("INVALID_ARGUMENT", ...).
  void CountError(const std::string& code);

  // EngineObserver (engine thread).
  void OnStep(const StepInfo& step) override;
  void OnPreemptions(int64_t sequences) override;

  // prometheus::Collectable: refreshes the snapshot gauges, then collects every family.
  std::vector<prometheus::MetricFamily> Collect() const override;
  // Collect() in Prometheus' text exposition format.
  std::string ScrapeText() const;

 private:
  friend class RequestMetrics;
  struct Families;
  RequestMetrics::FormatSeries* SeriesFor(const std::string& format);
  void RefreshSnapshots() const;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;

  std::mutex series_mu_;  // guards series_ (its elements never move once added)
  std::map<std::string, std::unique_ptr<RequestMetrics::FormatSeries>> series_;

  mutable std::mutex engine_mu_;  // guards engine_ against DetachEngine during a scrape
  const Engine* engine_ = nullptr;
};

}  // namespace squat::server
