// Helpers shared by the tests that run the real binaries (squat-server, squat-cli,
// squat-bench, prometheus) as child processes: a per-run RNG, files, exit codes, a free
// loopback port, the child process itself, a wait for a server to serve, and a watchdog
// that ends a hung test.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

// Where a child's stdout and stderr go: a file each (created or truncated), or the test
// process's own stream where the path is empty.
struct ChildOutput {
  std::string stdout_path;
  std::string stderr_path;

  // Both streams into one file, in the order they were written.
  static ChildOutput Log(const std::string& path) { return {path, path}; }
};

// A child process running argv (argv[0] is the binary's path). It dies with the test process
// (PR_SET_PDEATHSIG); when this object goes away it is killed if still running, reaped, and
// its output files are removed, so nothing outlives the test.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> argv, ChildOutput output = {}) : output_(std::move(output)) {
    std::vector<char*> exec_argv;
    for (std::string& arg : argv) exec_argv.push_back(arg.data());
    exec_argv.push_back(nullptr);
    // Opened here, not in the child, so that one file shared by both streams has one offset.
    // O_CLOEXEC keeps these descriptors out of other children; dup2 clears it on the copies.
    const int out_fd = OpenOutput(output_.stdout_path);
    const int err_fd = output_.stderr_path == output_.stdout_path ? out_fd : OpenOutput(output_.stderr_path);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
      if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
      execv(exec_argv[0], exec_argv.data());
      _exit(127);
    }
    if (out_fd >= 0) close(out_fd);
    if (err_fd >= 0 && err_fd != out_fd) close(err_fd);
  }
  ~ChildProcess() {
    if (pid_ > 0 && !wait_status_.has_value()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (!output_.stdout_path.empty()) std::remove(output_.stdout_path.c_str());
    if (!output_.stderr_path.empty()) std::remove(output_.stderr_path.c_str());
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  std::string StdoutText() const { return ReadFile(output_.stdout_path); }
  std::string StderrText() const { return ReadFile(output_.stderr_path); }
  void Signal(int signal_number) {
    if (pid_ > 0 && !wait_status_.has_value()) kill(pid_, signal_number);
  }

  // Reaps the child if it has exited (without waiting).
  bool running() { return pid_ > 0 && !WaitExit(std::chrono::milliseconds(0)).has_value(); }

  // The wait status (see ExitCodeOf) once the process exited within `timeout`; nullopt while
  // it still runs (or never started).
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0 && !wait_status_.has_value()) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        wait_status_ = status;
      } else if (std::chrono::steady_clock::now() >= give_up) {
        break;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    return wait_status_;
  }

 private:
  static int OpenOutput(const std::string& path) {
    return path.empty() ? -1 : open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }

  ChildOutput output_;
  pid_t pid_ = -1;
  std::optional<int> wait_status_;
};

// Polls `serving` (a health check of the caller's choosing) every 100 ms until it says yes;
// false once `server` has exited or `timeout` has passed.
inline bool WaitUntilServing(ChildProcess& server, std::chrono::milliseconds timeout,
                             const std::function<bool()>& serving) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < give_up) {
    if (!server.running()) return false;
    if (serving()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
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
