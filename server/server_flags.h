// Command-line flags of squat-server and their translation into a validated configuration.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine/engine.h"
#include "runtime/log/log.h"

namespace squat::server {

struct ServerConfig {
  EngineOptions engine;
  std::string address;
  int32_t drain_timeout_s = 30;
  std::string log_level;
  log::Format log_format = log::Format::kText;
  // Prometheus /metrics; port 0: no exporter. A port given on the command line must bind
  // (else the server exits); the default port is best effort (a warning if it is taken).
  std::string metrics_address;
  int32_t metrics_port = 0;
  bool metrics_port_required = false;
};

// Parses argv (both --kv-format and --kv_format spellings are accepted) and validates the
// values that do not need the model. Malformed flags make absl print usage and exit.
absl::StatusOr<ServerConfig> ParseServerCommandLine(int argc, char** argv);

}  // namespace squat::server
