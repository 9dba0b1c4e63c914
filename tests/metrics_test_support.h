// Helpers of the metrics tests: the Prometheus text format read back into samples, a tiny
// loopback HTTP client and a PATH lookup (child processes: tests/process_test_support.h).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/process_test_support.h"

namespace squat::testing_support {

using Labels = std::map<std::string, std::string>;

// One sample line of the text exposition format.
struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

// Parses the sample lines (comments skipped); a malformed line fails the test.
inline std::vector<Sample> ParseExposition(const std::string& text) {
  std::vector<Sample> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == absl::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          ADD_FAILURE() << "bad labels in: " << line;
          return samples;
        }
        const std::string key(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    const std::vector<absl::string_view> rest =
        absl::StrSplit(line.substr(std::min(i, line.size())), ' ', absl::SkipEmpty());
    if (rest.empty()) {
      ADD_FAILURE() << "no value in: " << line;
      return samples;
    }
    if (rest[0] == "+Inf") {
      sample.value = HUGE_VAL;
    } else if (!absl::SimpleAtod(rest[0], &sample.value)) {
      ADD_FAILURE() << "bad value in: " << line;
      return samples;
    }
    samples.push_back(std::move(sample));
  }
  return samples;
}

// The value of the one sample with this name and exactly these labels; nullopt if absent.
inline std::optional<double> FindSample(const std::vector<Sample>& samples, const std::string& name,
                                        const Labels& labels = {}) {
  for (const Sample& s : samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nullopt;
}

// The value, or a test failure and 0 when the sample is missing.
inline double SampleValue(const std::vector<Sample>& samples, const std::string& name,
                          const Labels& labels = {}) {
  const std::optional<double> value = FindSample(samples, name, labels);
  if (!value.has_value()) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=\"", v, "\""));
    ADD_FAILURE() << "no sample " << name << "{" << absl::StrJoin(parts, ",") << "}";
    return 0;
  }
  return *value;
}

// Sum over every sample of `name` whose labels include `subset`.
inline double SumSamples(const std::vector<Sample>& samples, const std::string& name,
                         const Labels& subset = {}) {
  double sum = 0;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : subset) {
      const auto it = s.labels.find(k);
      match &= it != s.labels.end() && it->second == v;
    }
    if (match) sum += s.value;
  }
  return sum;
}

struct HttpResponse {
  int status = 0;  // 0: no answer
  std::string headers;
  std::string body;
};

// One HTTP/1.0 request to 127.0.0.1:port (so the answer is never chunked); reads to EOF.
inline HttpResponse HttpRequest(int port, const std::string& method, const std::string& target) {
  HttpResponse response;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return response;
  timeval timeout{};
  timeout.tv_sec = 10;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return response;
  }
  const std::string request =
      absl::StrCat(method, " ", target, " HTTP/1.0\r\nHost: 127.0.0.1:", port, "\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return response;
  }
  std::string raw;
  char buffer[8192];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) raw.append(buffer, static_cast<size_t>(n));
  close(fd);
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) return response;
  const size_t space = raw.find(' ');
  if (!absl::SimpleAtoi(raw.substr(space + 1, 3), &response.status)) response.status = 0;
  response.headers = raw.substr(0, header_end);
  response.body = raw.substr(header_end + 4);
  return response;
}

inline HttpResponse HttpGet(int port, const std::string& target) {
  return HttpRequest(port, "GET", target);
}

inline std::string UrlEncode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += absl::StrCat("%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

// The executable `name` on PATH, or empty.
inline std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

}  // namespace squat::testing_support
