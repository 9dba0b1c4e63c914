// squat-bench's command line. Parsed by hand, like squat-cli's, so that every usage error
// exits with status 2 and flags keep their --kebab-case names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/channel_security.h"

namespace squat::bench {

// An inclusive range "min,max" (or a single number for both ends).
struct IntRange {
  int64_t min = 0;
  int64_t max = 0;
};

enum class PromptSource { kTokenIds, kWords };

struct BenchOptions {
  bool help = false;

  std::string address = "127.0.0.1:50051";
  int64_t concurrency = 8;    // streams in flight at most
  int64_t requests = 100;     // total requests sent
  double rate = 0;            // requests/s with Poisson arrivals; 0: closed loop
  IntRange prompt_tokens{16, 64};
  IntRange max_tokens{16, 64};
  PromptSource prompt_source = PromptSource::kTokenIds;
  double cancel_fraction = 0;  // share of requests cancelled after a random number of tokens
  std::vector<std::string> kv_methods;  // each request picks one; empty: the server's default
  uint32_t k_bits = 0;
  uint32_t v_bits = 0;
  float temperature = 1.0f;
  bool ignore_eos = true;     // lengths under the benchmark's control, not the model's
  uint64_t seed = 0;
  double timeout_s = 0;       // per-request deadline; 0: none
  client::ChannelSecurity security;  // TLS, mutual TLS, bearer token
  std::string json_path;      // write the summary here ("-": stdout)
  bool json_requests = false;  // include every request's record in the JSON
  bool allow_errors = false;  // exit 0 even when requests failed unexpectedly
  bool quiet = false;         // no table on stdout
};

// INVALID_ARGUMENT with a message for the user on any usage error.
absl::StatusOr<BenchOptions> ParseBenchArgs(int argc, const char* const* argv);
std::string BenchUsageText();

}  // namespace squat::bench
