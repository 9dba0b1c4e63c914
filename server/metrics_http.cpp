#include "server/metrics_http.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace squat::server {
namespace {

// How often the accept loop looks at stopping_.
constexpr int kAcceptPollMs = 100;
// A client that sends or reads slower than this is dropped (Prometheus' default scrape
// timeout is 10 s).
constexpr int kIoTimeoutSeconds = 5;
// Request line and headers larger than this are refused.
constexpr size_t kMaxRequestBytes = 16 * 1024;

void SetIoTimeouts(int fd) {
  timeval timeout{};
  timeout.tv_sec = kIoTimeoutSeconds;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    // MSG_NOSIGNAL: a client that hung up must not raise SIGPIPE in the server.
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string Response(const std::string& status, const std::string& content_type,
                     const std::string& body, bool include_body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                      include_body ? body : "");
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, int port, std::function<std::string()> render) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics port ", port, " is not in [0, 65535]"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  const int gai = getaddrinfo(address.c_str(), std::to_string(port).c_str(), &hints, &resolved);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not an IP address: ", gai_strerror(gai)));
  }
  const std::string where = address.find(':') != std::string::npos
                                ? absl::StrCat("[", address, "]:", port)
                                : absl::StrCat(address, ":", port);
  const int fd = socket(resolved->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int error = fd < 0 ? errno : 0;
  if (fd >= 0) {
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, resolved->ai_addr, resolved->ai_addrlen) != 0 || listen(fd, 16) != 0) error = errno;
  }
  freeaddrinfo(resolved);
  if (error != 0) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", where, ": ", std::strerror(error)));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  const int bound_port = ntohs(bound.ss_family == AF_INET6
                                   ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  const std::string host = address.find(':') != std::string::npos ? absl::StrCat("[", address, "]")
                                                                   : address;
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(
      fd, bound_port, absl::StrCat("http://", host, ":", bound_port, "/metrics"), std::move(render)));
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int port, std::string url,
                                     std::function<std::string()> render)
    : listen_fd_(listen_fd), port_(port), url_(std::move(url)), render_(std::move(render)) {
  thread_ = std::thread([this] { Serve(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  stopping_.store(true);
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
}

void MetricsHttpServer::Serve() {
  while (!stopping_.load()) {
    pollfd waiting{listen_fd_, POLLIN, 0};
    if (poll(&waiting, 1, kAcceptPollMs) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    SetIoTimeouts(fd);
    HandleConnection(fd);
    close(fd);
  }
}

void MetricsHttpServer::HandleConnection(int fd) {
  std::string request;
  char buffer[4096];
  while (request.find("\r\n\r\n") == std::string::npos) {
    if (request.size() > kMaxRequestBytes) {
      SendAll(fd, Response("431 Request Header Fields Too Large", "text/plain", "", true));
      return;
    }
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // hung up or timed out before a whole request
    request.append(buffer, static_cast<size_t>(n));
  }
  // Request line: METHOD SP TARGET SP VERSION. A query string is ignored.
  const std::string line = request.substr(0, request.find("\r\n"));
  const size_t method_end = line.find(' ');
  const size_t target_end = line.find(' ', method_end + 1);
  if (method_end == std::string::npos || target_end == std::string::npos) {
    SendAll(fd, Response("400 Bad Request", "text/plain", "bad request line\n", true));
    return;
  }
  const std::string method = line.substr(0, method_end);
  std::string target = line.substr(method_end + 1, target_end - method_end - 1);
  target = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    SendAll(fd, Response("405 Method Not Allowed", "text/plain", "GET /metrics\n", true));
    return;
  }
  if (target != "/metrics") {
    SendAll(fd, Response("404 Not Found", "text/plain", "metrics are at /metrics\n", method == "GET"));
    return;
  }
  SendAll(fd, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_(), method == "GET"));
}

}  // namespace squat::server
