// Command-line flags of squat-server and their translation into a validated configuration.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine.h"

namespace squat::server {

struct ServerConfig {
  EngineOptions engine;
  std::string address;
  int32_t drain_timeout_s = 30;
  std::string log_level;
};

// Parses argv (both --kv-format and --kv_format spellings are accepted) and validates the
// values that do not need the model. Malformed flags make absl print usage and exit.
absl::StatusOr<ServerConfig> ParseServerCommandLine(int argc, char** argv);

}  // namespace squat::server
