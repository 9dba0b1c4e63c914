// The requests of one squat-bench run, all drawn up front from --seed so that a run's
// workload does not depend on thread timing and can be replayed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/bench_options.h"

namespace squat::bench {

struct RequestSpec {
  int64_t index = 0;
  std::vector<int32_t> prompt_ids;  // PromptSource::kTokenIds
  std::string prompt_text;          // PromptSource::kWords
  int64_t prompt_tokens = 0;        // drawn length (exact for ids, words for text)
  int64_t max_tokens = 0;
  int64_t cancel_after_tokens = 0;  // cancel once this many tokens arrived; 0: never
  std::string kv_method;            // empty: the server's default
  uint64_t sampling_seed = 0;
  double arrival_s = 0;             // send time after the start; 0 for every request in closed loop
};

// What the workload needs to know about the served model.
struct ModelFacts {
  int32_t vocab_size = 0;
  std::vector<int32_t> eos_token_ids;  // never placed in a random prompt
};

// `options.requests` specs. Exactly round(cancel_fraction * requests) of those with
// max_tokens >= 2 are cancelled, each after 1..max_tokens-1 tokens.
std::vector<RequestSpec> MakeWorkload(const BenchOptions& options, const ModelFacts& model);

}  // namespace squat::bench
