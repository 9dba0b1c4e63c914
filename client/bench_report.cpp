#include "client/bench_report.h"

#include <utility>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace squat::bench {
namespace {

nlohmann::json DistributionJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"min", d.min}, {"p50", d.p50}, {"p90", d.p90},
          {"p95", d.p95},     {"p99", d.p99},   {"max", d.max}};
}

nlohmann::json OptionsJson(const BenchOptions& o) {
  return {{"address", o.address},
          {"concurrency", o.concurrency},
          {"requests", o.requests},
          {"rate", o.rate},
          {"prompt_tokens", {o.prompt_tokens.min, o.prompt_tokens.max}},
          {"max_tokens", {o.max_tokens.min, o.max_tokens.max}},
          {"prompt_source", o.prompt_source == PromptSource::kTokenIds ? "ids" : "words"},
          {"cancel_fraction", o.cancel_fraction},
          {"kv_methods", o.kv_methods},
          {"k_bits", o.k_bits},
          {"v_bits", o.v_bits},
          {"temperature", o.temperature},
          {"ignore_eos", o.ignore_eos},
          {"seed", o.seed},
          {"timeout_s", o.timeout_s}};
}

nlohmann::json RecordJson(const RequestRecord& r) {
  return {{"index", r.index},
          {"request_id", r.request_id},
          {"kv_method", r.kv_method},
          {"max_tokens", r.max_tokens},
          {"cancel_after_tokens", r.cancel_after_tokens},
          {"outcome", r.outcome},
          {"unexpected", r.unexpected},
          {"message", r.message},
          {"cancel_sent", r.cancel_sent},
          {"scheduled_s", r.scheduled_s},
          {"start_s", r.start_s},
          {"ttft_s", r.ttft_s},
          {"e2e_s", r.e2e_s},
          {"last_token_s", r.last_token_s},
          {"itl_s", r.itl_s},
          {"tokens_received", r.tokens_received},
          {"chunks", r.chunks},
          {"usage_prompt_tokens", r.usage_prompt_tokens},
          {"usage_completion_tokens", r.usage_completion_tokens}};
}

bool IsCompleted(const RequestRecord& r) { return r.outcome.rfind("ok:", 0) == 0 && !r.unexpected; }

}  // namespace

Summary Summarize(const RunResult& run) {
  Summary s;
  s.requests = static_cast<int64_t>(run.records.size());
  s.duration_s = run.duration_s;
  std::vector<double> ttft, itl, tpot, e2e;
  for (const RequestRecord& r : run.records) {
    ++s.outcomes[r.outcome];
    if (IsCompleted(r)) {
      ++s.completed;
      s.prompt_tokens += r.usage_prompt_tokens;
      e2e.push_back(r.e2e_s);
    } else if (r.outcome == "cancelled_by_client") {
      ++s.cancelled;
    } else {
      ++s.unexpected;
    }
    s.output_tokens += r.tokens_received;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    if (!r.itl_s.empty()) {
      tpot.push_back(std::accumulate(r.itl_s.begin(), r.itl_s.end(), 0.0) /
                     static_cast<double>(r.itl_s.size()));
    }
  }
  if (s.duration_s > 0) {
    s.output_tokens_per_s = static_cast<double>(s.output_tokens) / s.duration_s;
    s.completed_requests_per_s = static_cast<double>(s.completed) / s.duration_s;
  }
  s.ttft = Summarize(std::move(ttft));
  s.itl = Summarize(std::move(itl));
  s.tpot = Summarize(std::move(tpot));
  s.e2e = Summarize(std::move(e2e));
  return s;
}

std::string FormatTable(const Summary& s) {
  std::string out = absl::StrFormat("%-10s %8s %10s %10s %10s %10s %10s %10s\n", "latency", "count",
                                    "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms");
  auto row = [&](const char* name, const Distribution& d) {
    absl::StrAppendFormat(&out, "%-10s %8d %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, d.count,
                          d.mean * 1e3, d.p50 * 1e3, d.p90 * 1e3, d.p95 * 1e3, d.p99 * 1e3,
                          d.max * 1e3);
  };
  row("ttft", s.ttft);
  row("itl", s.itl);
  row("tpot", s.tpot);
  row("e2e", s.e2e);
  absl::StrAppendFormat(&out,
                        "\nrequests %d in %.2f s: completed %d, cancelled by client %d, "
                        "unexpected %d\n",
                        s.requests, s.duration_s, s.completed, s.cancelled, s.unexpected);
  absl::StrAppendFormat(&out, "throughput: %.1f output tokens/s, %.2f completed requests/s (%d output tokens)\n",
                        s.output_tokens_per_s, s.completed_requests_per_s, s.output_tokens);
  std::vector<std::string> outcomes;
  for (const auto& [outcome, count] : s.outcomes) outcomes.push_back(absl::StrCat(outcome, "=", count));
  absl::StrAppend(&out, "outcomes: ", absl::StrJoin(outcomes, " "), "\n");
  return out;
}

nlohmann::json ToJson(const BenchOptions& options, const nlohmann::json& model,
                      const Summary& s, const RunResult& run) {
  nlohmann::json errors = nlohmann::json::array();
  for (const RequestRecord& r : run.records) {
    if (r.unexpected && errors.size() < 20) {
      errors.push_back({{"index", r.index}, {"outcome", r.outcome}, {"message", r.message}});
    }
  }
  nlohmann::json json = {
      {"options", OptionsJson(options)},
      {"model", model},
      {"requests", s.requests},
      {"completed", s.completed},
      {"cancelled", s.cancelled},
      {"unexpected", s.unexpected},
      {"outcomes", s.outcomes},
      {"duration_s", s.duration_s},
      {"output_tokens", s.output_tokens},
      {"prompt_tokens", s.prompt_tokens},
      {"output_tokens_per_s", s.output_tokens_per_s},
      {"completed_requests_per_s", s.completed_requests_per_s},
      {"latency_s",
       {{"ttft", DistributionJson(s.ttft)},
        {"itl", DistributionJson(s.itl)},
        {"tpot", DistributionJson(s.tpot)},
        {"e2e", DistributionJson(s.e2e)}}},
      {"first_errors", errors}};
  if (options.json_requests) {
    nlohmann::json records = nlohmann::json::array();
    for (const RequestRecord& r : run.records) records.push_back(RecordJson(r));
    json["records"] = std::move(records);
  }
  return json;
}

}  // namespace squat::bench
