// A minimal HTTP/1.1 endpoint for Prometheus scrapes: GET /metrics answers with the text a
// callback renders; every other path is 404. One thread serves one connection at a time
// (scrapes are rare and small) and closes it after the answer.
//
// Why not prometheus-cpp's Exposer: Debian's civetweb starts its threads with a fixed 100 KiB
// stack, and glibc refuses such threads (EINVAL) in a process whose static TLS is larger, as
// it is with LibTorch + OpenBLAS + glog loaded (~106 KB here), so the Exposer cannot start in
// squat-server.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace squat::server {

class MetricsHttpServer {
 public:
  // Listens on `address` (IPv4 or IPv6 literal) and `port` (0: any free port) and serves
  // `render()` at /metrics until destroyed. `render` is called on the server's thread.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                   int port,
                                                                   std::function<std::string()> render);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  // "http://ADDRESS:PORT/metrics".
  const std::string& url() const { return url_; }

 private:
  MetricsHttpServer(int listen_fd, int port, std::string url, std::function<std::string()> render);
  void Serve();
  void HandleConnection(int fd);

  const int listen_fd_;
  const int port_;
  const std::string url_;
  const std::function<std::string()> render_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace squat::server
