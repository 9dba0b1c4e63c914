// squat-throughput's command line: which model and KV format, the engine's batching limits, and
// the sweep (prompt lengths x batch sizes) with its time budget.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace squat::bench {

// A KV format as the benchmarks name it: "fp16", "kivi-2", "squat-2", "squat-post-4", or with
// separate key/value bits "squat-k4v2". The method part goes to EngineOptions::kv_format.
struct FormatChoice {
  std::string name;    // as given
  std::string method;  // fp16, kivi, squat, squat-post
  int32_t k_bits = 0;  // 0: fp16 (full precision)
  int32_t v_bits = 0;
};
absl::StatusOr<FormatChoice> ParseFormatChoice(const std::string& text);

// One entry of --batches: a count, or "max" (the most sequences the pool is estimated to hold).
struct BatchChoice {
  int64_t count = 0;
  bool max = false;
};

struct ThroughputOptions {
  bool help = false;
  bool capabilities = false;   // print what this build supports (JSON) and exit
  bool describe_only = false;  // load, print the model / KV description, exit

  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "auto";
  FormatChoice format{"squat-2", "squat", 2, 2};
  int64_t kv_pool_mib = 0;                  // 0: the engine's default
  double gpu_memory_utilization = 0;        // 0: not set (only where the engine has the option)
  int32_t max_num_batched_tokens = 0;       // 0: the engine's default
  int32_t max_prefill_chunk = 0;            // 0: the engine's default
  int32_t max_model_len = 0;                // 0: the model's
  int64_t max_num_seqs = 0;  // 0: the largest batch (2048 when the list has "max")

  std::vector<BatchChoice> batches;         // swept in order for each prompt length
  std::vector<int64_t> prompt_tokens{160};  // prompt lengths, swept outermost
  int64_t gen_tokens = 338;
  // > 0: each point generates enough tokens that every sequence still decodes for about this
  // many steps after the last prompt is prefilled (a steady decode window at the full batch).
  int64_t steady_window = 0;
  std::vector<int64_t> capacity_contexts;   // sequence lengths for the capacity table
  uint64_t seed = 1;
  double budget_s = 0;                      // whole run, load included; 0: no limit
  bool fill_budget = false;  // when the next batch would not fit the budget, run the largest that does
  double max_preemption_ratio = 0.05;  // preemptions / batch above this end the sweep
  bool warmup = true;
  std::string json_path;  // rewritten after each point
  std::string label;
};

absl::StatusOr<ThroughputOptions> ParseThroughputArgs(int argc, const char* const* argv);
std::string ThroughputUsage();

}  // namespace squat::bench
