// The squat-cli subcommands. Each returns the process exit status: 0 on success, 1 when
// the call failed (after printing "error: CODE: message" to stderr).
#pragma once

#include "client/cli_options.h"

namespace squat::cli {

int RunCommand(const CliOptions& options);

}  // namespace squat::cli
