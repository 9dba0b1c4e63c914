#include "server/shutdown_signal.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

namespace squat::server {
namespace {

sigset_t ShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void BlockShutdownSignals() {
  const sigset_t set = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownSignal() {
  const sigset_t set = ShutdownSignals();
  int signal_number = 0;
  while (sigwait(&set, &signal_number) != 0) {
  }
  return signal_number;
}

void ExitOnSecondSignal() {
  std::thread([] {
    WaitForShutdownSignal();
    static const char kMessage[] = "second shutdown signal: exiting without finishing the drain\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    _exit(1);
  }).detach();
}

}  // namespace squat::server
