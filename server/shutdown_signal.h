// SIGTERM / SIGINT without async-signal handlers: the signals are blocked in every thread
// and received synchronously with sigwait, so no code runs in signal context.
#pragma once

namespace squat::server {

// Call first thing in main, before any thread starts (threads inherit the mask).
void BlockShutdownSignals();
// Blocks until SIGTERM or SIGINT arrives (or returns at once if one is pending, e.g. it
// came while the model was loading); returns the signal number.
int WaitForShutdownSignal();
// Starts a detached thread that exits the process with status 1 on a further signal, so
// that a second Ctrl-C cuts a drain short.
void ExitOnSecondSignal();

}  // namespace squat::server
