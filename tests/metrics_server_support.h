// The real squat-server for the metrics tests: started on free loopback ports with its metrics
// endpoint, driven through a real gRPC client, scraped over HTTP.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "squat/v1/generation.grpc.pb.h"
#include "tests/metrics_test_support.h"
#include "tests/process_test_support.h"
#include "tests/server_process_test_support.h"

namespace squat::testing_support {

constexpr std::chrono::seconds kServerStartupTimeout(60);

// A squat-server child on 127.0.0.1 with --metrics-port on another free port.
class MetricsServer {
 public:
  explicit MetricsServer(const std::vector<std::string>& extra_args)
      : grpc_port_(FreeLoopbackPort()), metrics_port_(FreeLoopbackPort()) {
    std::vector<std::string> args = {"--metrics-port", std::to_string(metrics_port_), "--metrics-address",
                                     "127.0.0.1"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    process_ =
        StartTinyServer(address(), args, ChildOutput::Log(UniqueTempPath("squat_metrics", "server_log")));
    // Retry the connection every 100 ms while the server starts (gRPC's default backoff grows
    // to seconds).
    grpc::ChannelArguments channel_args;
    channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
    channel_ = grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), channel_args);
    stub_ = v1::GenerationService::NewStub(channel_);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }
  int metrics_port() const { return metrics_port_; }
  ChildProcess& process() { return *process_; }
  v1::GenerationService::Stub& stub() { return *stub_; }
  std::string Log() const { return process_->StdoutText(); }

  // Health SERVING within the startup timeout; false if the server died or never got there.
  bool WaitServing() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    return WaitUntilServing(*process_, kServerStartupTimeout, [&] {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      grpc::health::v1::HealthCheckRequest request;
      grpc::health::v1::HealthCheckResponse response;
      return health->Check(&context, request, &response).ok() &&
             response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    });
  }

  // GET /metrics; a failed scrape fails the test and returns "".
  std::string Scrape() const {
    const HttpResponse response = HttpGet(metrics_port_, "/metrics");
    EXPECT_EQ(response.status, 200) << response.headers;
    return response.status == 200 ? response.body : "";
  }

 private:
  const int grpc_port_;
  const int metrics_port_;
  std::unique_ptr<ChildProcess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::GenerationService::Stub> stub_;
};

inline v1::GenerateRequest MakeRequest(const std::string& id, const std::string& prompt, int max_tokens,
                                       const std::string& method = "", int bits = 0) {
  v1::GenerateRequest request;
  request.set_request_id(id);
  request.set_text(prompt);
  request.mutable_sampling()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  request.mutable_sampling()->set_ignore_eos(true);  // the random model must not end by chance
  if (!method.empty()) request.mutable_kv_cache()->set_method(method);
  if (bits > 0) {
    request.mutable_kv_cache()->set_k_bits(static_cast<uint32_t>(bits));
    request.mutable_kv_cache()->set_v_bits(static_cast<uint32_t>(bits));
  }
  return request;
}

inline grpc::Status Generate(v1::GenerationService::Stub& stub, const v1::GenerateRequest& request,
                             v1::GenerateResponse* response,
                             std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Generate(&context, request, response);
}

// What a finished stream delivered.
struct StreamResult {
  grpc::Status status;
  int tokens = 0;
  v1::GenerateStreamResponse last;
};

inline StreamResult Stream(v1::GenerationService::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader = stub.GenerateStream(&context, request);
  StreamResult result;
  v1::GenerateStreamResponse chunk;
  while (reader->Read(&chunk)) {
    result.tokens += chunk.token_ids_size();
    result.last = chunk;
  }
  result.status = reader->Finish();
  return result;
}

// A random prompt of a few words; the tests hold for any prompt.
inline std::string RandomPrompt() {
  static const char* const kWords[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy",
                                       "dog", "server", "token", "cache", "river", "light",
                                       "seven", "blue", "garden", "stone", "music"};
  const int count = 2 + static_cast<int>(Rng()() % 8);
  std::string prompt;
  for (int i = 0; i < count; ++i) {
    absl::StrAppend(&prompt, i > 0 ? " " : "", kWords[Rng()() % (sizeof(kWords) / sizeof(kWords[0]))]);
  }
  return prompt;
}

}  // namespace squat::testing_support
