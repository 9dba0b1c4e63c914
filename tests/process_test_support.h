// Helpers shared by the tests that run the real binaries (squat-server, squat-cli,
// squat-bench) as child processes: a per-run RNG, files, exit codes, a free loopback port,
// and a watchdog that ends a hung test.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace squat::testing_support {

// Seeded once per test process: each run draws fresh prompts and ids.
inline std::mt19937_64& Rng() {
  static std::mt19937_64 rng{std::random_device{}()};
  return rng;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A path in gtest's temp dir unique to this process and call.
inline std::string UniqueTempPath(const std::string& prefix, const std::string& stem) {
  return absl::StrCat(::testing::TempDir(), prefix, "_", getpid(), "_", stem, "_",
                      absl::Hex(Rng()(), absl::kZeroPad16));
}

// The shell's convention: the exit status, or 128 + the signal.
inline int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// A port the kernel just handed out on 127.0.0.1 (bind to port 0, read it back).
inline int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// Ends the test process (and with it the children, through PDEATHSIG) if a test hangs.
class Watchdog {
 public:
  Watchdog(const char* test_name, std::chrono::seconds timeout)
      : thread_([this, test_name, timeout] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_for(lock, timeout, [this] { return done_; })) {
            std::fprintf(stderr, "%s: test exceeded %llds; aborting\n", test_name,
                         static_cast<long long>(timeout.count()));
            std::_Exit(1);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace squat::testing_support
