// squat-server on the tiny checkpoint as a child process, for the tests that run the real
// server binary. The test target defines SQUAT_SERVER_BIN and SQUAT_TINY_MODEL_DIR
// (tests/CMakeLists.txt); waiting for it to serve is WaitUntilServing with the test's own
// health check (CLI or gRPC, plaintext or TLS).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tests/process_test_support.h"

#if !defined(SQUAT_SERVER_BIN) || !defined(SQUAT_TINY_MODEL_DIR)
#error "tests/server_process_test_support.h needs SQUAT_SERVER_BIN and SQUAT_TINY_MODEL_DIR"
#endif

namespace squat::testing_support {

// squat-server on the tiny checkpoint, on CPU, serving gRPC at `address`; `extra_args` follow.
inline std::unique_ptr<ChildProcess> StartTinyServer(const std::string& address,
                                                     const std::vector<std::string>& extra_args,
                                                     ChildOutput output) {
  std::vector<std::string> argv = {SQUAT_SERVER_BIN, "--model", SQUAT_TINY_MODEL_DIR,
                                   "--address", address, "--device", "cpu"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  return std::make_unique<ChildProcess>(std::move(argv), std::move(output));
}

}  // namespace squat::testing_support
