// A squat-server child process for the TLS tests and the soak driver: started with a log
// file, killed with the test process (PR_SET_PDEATHSIG) or when the object goes away, with
// its exit status and resident memory readable.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace squat::testing_support {

class ServerChild {
 public:
  // args[0] is the binary. stdout and stderr go to log_path.
  ServerChild(std::vector<std::string> args, std::string log_path) : log_path_(std::move(log_path)) {
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ServerChild(const ServerChild&) = delete;
  ServerChild& operator=(const ServerChild&) = delete;
  ~ServerChild() {
    if (running()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::remove(log_path_.c_str());
  }

  pid_t pid() const { return pid_; }
  bool running() { return pid_ > 0 && !WaitExit(std::chrono::milliseconds(0)).has_value(); }
  void Signal(int signal_number) { kill(pid_, signal_number); }

  std::string Log() const {
    std::ifstream in(log_path_, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  // The shell-style exit code (128 + n for signal n) once the process ended within `timeout`.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout) {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (!exit_code_.has_value()) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      } else if (std::chrono::steady_clock::now() >= give_up) {
        break;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    return exit_code_;
  }

  // VmRSS from /proc/<pid>/status in bytes; -1 when it cannot be read.
  int64_t RssBytes() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string key;
    while (in >> key) {
      if (key == "VmRSS:") {
        int64_t kib = -1;
        in >> kib;
        return kib < 0 ? -1 : kib * 1024;
      }
      std::string rest;
      std::getline(in, rest);
    }
    return -1;
  }

 private:
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace squat::testing_support
