// squat-cli: command-line client of squat-server (generate, stream, tokenize, info, health).
#include <cstdio>
#include <string>

#include "client/cli_commands.h"
#include "client/cli_options.h"

int main(int argc, char** argv) {
  absl::StatusOr<squat::cli::CliOptions> options = squat::cli::ParseCliArgs(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "squat-cli: %s\nrun 'squat-cli --help' for usage\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  if (options->help) {
    std::fputs(squat::cli::UsageText().c_str(), stdout);
    return 0;
  }
  return squat::cli::RunCommand(*options);
}
