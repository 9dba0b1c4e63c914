// Sends a squat-bench workload to the server: one thread per stream in flight, each a
// blocking GenerateStream reader, timing every chunk on the client's steady clock.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "client/bench_options.h"
#include "client/bench_workload.h"

namespace squat::bench {

// What happened to one request, as seen by the client. Times in seconds.
struct RequestRecord {
  int64_t index = 0;
  std::string request_id;
  std::string kv_method;  // as requested; empty: the server's default
  int64_t max_tokens = 0;
  int64_t cancel_after_tokens = 0;  // the planned cancellation; 0: none
  // "ok:<finish reason>" (length, stop, eos), "cancelled_by_client", "error:<GRPC_CODE>", or
  // "invalid_stream" (status OK but the chunks broke the API's contract; see `message`).
  std::string outcome;
  bool unexpected = false;  // anything but a normal finish or our own cancellation
  std::string message;      // the gRPC error message or what was wrong with the stream
  bool cancel_sent = false;

  double scheduled_s = 0;   // its Poisson arrival time after the run's start (0 in closed loop)
  double start_s = 0;       // when the call was sent, after the run's start (later than
                            // scheduled_s when every stream was busy)
  double ttft_s = -1;       // send -> first chunk carrying a token; -1: no token arrived
  double e2e_s = 0;         // send -> status received
  double last_token_s = -1; // send -> last chunk carrying a token
  // One entry per token of every token-carrying chunk after the first (and before our
  // cancel): the gap since the previous such chunk, divided evenly among the chunk's tokens.
  std::vector<double> itl_s;
  int64_t tokens_received = 0;
  int64_t chunks = 0;
  int64_t usage_prompt_tokens = 0;      // from the last chunk (0 when it never came)
  int64_t usage_completion_tokens = 0;
};

struct RunResult {
  std::vector<RequestRecord> records;  // in request order
  double duration_s = 0;               // the run's start -> the last status
};

RunResult RunWorkload(const BenchOptions& options, const std::vector<RequestSpec>& specs);

}  // namespace squat::bench
