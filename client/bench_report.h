// squat-bench's results: latency percentiles, throughput and outcome counts, printed as a
// table and written as JSON.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "client/bench_options.h"
#include "client/bench_runner.h"
#include "common/distribution.h"

namespace squat::bench {

using stats::Distribution;
using stats::Summarize;

struct Summary {
  int64_t requests = 0;
  std::map<std::string, int64_t> outcomes;  // outcome -> requests
  int64_t completed = 0;                    // ok:*
  int64_t cancelled = 0;                    // cancelled_by_client
  int64_t unexpected = 0;                   // every other outcome
  int64_t output_tokens = 0;                // all tokens received, cancelled streams included
  int64_t prompt_tokens = 0;                // server-reported, completed requests
  double duration_s = 0;
  double output_tokens_per_s = 0;
  double completed_requests_per_s = 0;
  Distribution ttft;  // every request that received a token
  Distribution itl;   // every inter-token gap (per token)
  Distribution tpot;  // per request: the mean of its inter-token gaps
  Distribution e2e;   // completed requests
};

Summary Summarize(const RunResult& run);

// Human-readable report (milliseconds) for stdout.
std::string FormatTable(const Summary& summary);

nlohmann::json ToJson(const BenchOptions& options, const nlohmann::json& model,
                      const Summary& summary, const RunResult& run);

}  // namespace squat::bench
