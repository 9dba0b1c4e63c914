#include "client/cli_commands.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <google/protobuf/text_format.h>
#include <grpcpp/grpcpp.h>

#include "client/cli_output.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "squat/v1/generation.grpc.pb.h"

namespace squat::cli {
namespace {

constexpr double kDefaultHealthTimeoutS = 5.0;

void SetDeadline(double timeout_s, grpc::ClientContext* context) {
  if (timeout_s <= 0) return;
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(
                            std::chrono::duration<double>(timeout_s)));
}

// An unreadable certificate, key or token file is a usage error (exit 2), like a bad flag.
std::shared_ptr<grpc::Channel> Connect(const CliOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      client::CreateClientChannel(options.address, options.security);
  if (!channel.ok()) {
    std::fprintf(stderr, "squat-cli: %s\n", std::string(channel.status().message()).c_str());
    std::exit(2);
  }
  return *std::move(channel);
}

v1::GenerateRequest BuildGenerateRequest(const CliOptions& o) {
  v1::GenerateRequest request;
  if (o.token_ids.has_value()) {
    request.mutable_token_ids()->mutable_ids()->Add(o.token_ids->begin(), o.token_ids->end());
  } else {
    request.set_text(o.prompt.value_or(""));
  }
  if (o.add_special_tokens.has_value()) request.set_add_special_tokens(*o.add_special_tokens);
  request.set_request_id(o.request_id);

  v1::SamplingParams* s = request.mutable_sampling();
  s->set_max_tokens(o.max_tokens);
  if (o.temperature.has_value()) s->set_temperature(*o.temperature);
  s->set_top_k(o.top_k);
  if (o.top_p.has_value()) s->set_top_p(*o.top_p);
  s->set_min_p(o.min_p);
  if (o.repetition_penalty.has_value()) s->set_repetition_penalty(*o.repetition_penalty);
  s->set_presence_penalty(o.presence_penalty);
  s->set_frequency_penalty(o.frequency_penalty);
  if (o.seed.has_value()) s->set_seed(*o.seed);
  for (const std::string& stop : o.stop) s->add_stop(stop);
  s->mutable_stop_token_ids()->Add(o.stop_token_ids.begin(), o.stop_token_ids.end());
  s->set_ignore_eos(o.ignore_eos);
  s->set_logprobs(o.logprobs);

  v1::KvCacheConfig* kv = request.mutable_kv_cache();
  kv->set_method(o.kv_method);
  kv->set_k_bits(o.k_bits);
  kv->set_v_bits(o.v_bits);
  return request;
}

// Human-readable outcome of a generation, on stderr so stdout stays the generated text.
void PrintSummary(v1::FinishReason reason, const v1::Usage& usage, const v1::Timings& timings) {
  std::fprintf(stderr, "[finish_reason=%s prompt_tokens=%u completion_tokens=%u ttft=%.3fs total=%.3fs]\n",
               v1::FinishReason_Name(reason).c_str(), usage.prompt_tokens(),
               usage.completion_tokens(), timings.time_to_first_token_seconds(),
               timings.total_seconds());
}

int RunGenerate(const CliOptions& options) {
  auto stub = v1::GenerationService::NewStub(Connect(options));
  grpc::ClientContext context;
  SetDeadline(options.timeout_s, &context);
  v1::GenerateResponse response;
  const grpc::Status status = stub->Generate(&context, BuildGenerateRequest(options), &response);
  if (!status.ok()) {
    PrintRpcError(status);
    return 1;
  }
  if (options.json) {
    std::printf("%s\n", ToJsonLine(response).c_str());
  } else {
    std::printf("%s\n", response.text().c_str());
    PrintSummary(response.finish_reason(), response.usage(), response.timings());
  }
  return 0;
}

int RunStream(const CliOptions& options) {
  auto stub = v1::GenerationService::NewStub(Connect(options));
  grpc::ClientContext context;
  SetDeadline(options.timeout_s, &context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
      stub->GenerateStream(&context, BuildGenerateRequest(options));
  v1::GenerateStreamResponse chunk;
  v1::GenerateStreamResponse last;
  uint64_t tokens_received = 0;
  bool cancelled_by_us = false;
  while (reader->Read(&chunk)) {
    if (options.json) {
      std::printf("%s\n", ToJsonLine(chunk).c_str());
    } else {
      std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
    }
    std::fflush(stdout);
    tokens_received += static_cast<uint64_t>(chunk.token_ids_size());
    last = chunk;
    if (options.cancel_after_tokens > 0 && !cancelled_by_us &&
        tokens_received >= options.cancel_after_tokens) {
      context.TryCancel();
      cancelled_by_us = true;
    }
  }
  const grpc::Status status = reader->Finish();
  if (!options.json) std::printf("\n");
  if (cancelled_by_us && status.error_code() == grpc::StatusCode::CANCELLED) {
    std::fprintf(stderr, "[cancelled after %llu tokens]\n",
                 static_cast<unsigned long long>(tokens_received));
    return 0;
  }
  if (!status.ok()) {
    PrintRpcError(status);
    return 1;
  }
  if (!options.json) PrintSummary(last.finish_reason(), last.usage(), last.timings());
  return 0;
}

int RunTokenize(const CliOptions& options) {
  auto stub = v1::GenerationService::NewStub(Connect(options));
  grpc::ClientContext context;
  SetDeadline(options.timeout_s, &context);
  v1::TokenizeRequest request;
  request.set_text(options.prompt.value_or(""));
  if (options.add_special_tokens.has_value()) {
    request.set_add_special_tokens(*options.add_special_tokens);
  }
  v1::TokenizeResponse response;
  const grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) {
    PrintRpcError(status);
    return 1;
  }
  if (options.json) {
    std::printf("%s\n", ToJsonLine(response).c_str());
    return 0;
  }
  for (int i = 0; i < response.token_ids_size(); ++i) {
    std::printf("%d\t%s\n", response.token_ids(i),
                i < response.tokens_size() ? response.tokens(i).c_str() : "");
  }
  return 0;
}

int RunInfo(const CliOptions& options) {
  auto stub = v1::GenerationService::NewStub(Connect(options));
  grpc::ClientContext context;
  SetDeadline(options.timeout_s, &context);
  v1::ModelInfo info;
  const grpc::Status status = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    PrintRpcError(status);
    return 1;
  }
  if (options.json) {
    std::printf("%s\n", ToJsonLine(info).c_str());
    return 0;
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(info, &text);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

int RunHealth(const CliOptions& options) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(options));
  grpc::ClientContext context;
  SetDeadline(options.timeout_s > 0 ? options.timeout_s : kDefaultHealthTimeoutS, &context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    PrintRpcError(status);
    return 1;
  }
  if (options.json) {
    std::printf("%s\n", ToJsonLine(response).c_str());
  } else {
    std::printf("%s\n",
                grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  }
  return 0;
}

}  // namespace

int RunCommand(const CliOptions& options) {
  if (options.command == "generate") return RunGenerate(options);
  if (options.command == "stream") return RunStream(options);
  if (options.command == "tokenize") return RunTokenize(options);
  if (options.command == "info") return RunInfo(options);
  return RunHealth(options);  // ParseCliArgs admits only the five commands
}

}  // namespace squat::cli
