// squat-cli's command line: `squat-cli <command> [flags] [prompt]`. Parsed by hand (not
// absl::ParseCommandLine) so that every usage error exits with status 2 and flags keep
// their --kebab-case names.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/channel_security.h"

namespace squat::cli {

struct CliOptions {
  std::string command;  // generate, stream, tokenize, info, health
  std::optional<std::string> prompt;
  bool help = false;

  std::string address = "127.0.0.1:50051";
  double timeout_s = 0;  // 0: no deadline
  bool json = false;
  client::ChannelSecurity security;  // TLS, mutual TLS, bearer token

  // Generation.
  std::optional<std::vector<int32_t>> token_ids;
  std::string request_id;
  std::optional<bool> add_special_tokens;
  uint32_t max_tokens = 0;
  std::optional<float> temperature;
  uint32_t top_k = 0;
  std::optional<float> top_p;
  float min_p = 0;
  std::optional<float> repetition_penalty;
  float presence_penalty = 0;
  float frequency_penalty = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  uint32_t logprobs = 0;
  std::string kv_method;
  uint32_t k_bits = 0;
  uint32_t v_bits = 0;
  uint64_t cancel_after_tokens = 0;  // stream only; 0: never

  std::string service;  // health: the service name to check ("" = the whole server)
};

// INVALID_ARGUMENT with a message for the user on any usage error.
absl::StatusOr<CliOptions> ParseCliArgs(int argc, const char* const* argv);
std::string UsageText();

}  // namespace squat::cli
