#include "server/generation_service.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/proto_conversion.h"
#include "server/status_mapping.h"
#include "spdlog/spdlog.h"

namespace squat::server {
namespace {

// Handlers wake up this often to notice a cancelled call or a passed deadline.
constexpr std::chrono::milliseconds kPollInterval(50);
// After the client is gone, how long to wait for the engine's final event (to log the
// request's outcome); the engine frees the request's pages at its next step regardless.
constexpr std::chrono::seconds kCancelGrace(5);
constexpr size_t kMaxRequestIdLength = 128;

std::string NewRequestId() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t value;
  {
    std::lock_guard<std::mutex> lock(mu);
    value = rng();
  }
  return absl::StrCat("req-", absl::Hex(value, absl::kZeroPad16));
}

bool IsPrintableId(const std::string& id) {
  if (id.size() > kMaxRequestIdLength) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;  // keeps log lines one line each
  }
  return true;
}

// The caller's id, or a generated one. A caller's id that would garble the logs is
// rejected (and logged under a generated id).
grpc::Status ResolveRequestId(const v1::GenerateRequest& request, std::string* id) {
  if (request.request_id().empty()) {
    *id = NewRequestId();
    return grpc::Status::OK;
  }
  if (!IsPrintableId(request.request_id())) {
    *id = NewRequestId();
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("request_id must be at most ", kMaxRequestIdLength,
                         " printable ASCII characters without spaces")};
  }
  *id = request.request_id();
  return grpc::Status::OK;
}

bool CallIsGone(grpc::ServerContext* context) {
  return context->IsCancelled() || context->deadline() <= std::chrono::system_clock::now();
}

// Waits for the request's next event; false once the call was cancelled or timed out.
bool NextEvent(grpc::ServerContext* context, RequestStream* stream, GenerationEvent* event) {
  while (!CallIsGone(context)) {
    if (stream->Next(event, kPollInterval)) return true;
  }
  return false;
}

void LogFinished(const char* kind, const std::string& id, const GenerationEvent& event) {
  const Timings& t = event.timings;
  if (event.finish_reason == FinishReason::kError) {
    spdlog::error("[{}] {} failed: {} (prompt_tokens={} completion_tokens={} total={:.3f}s)", id,
                  kind, event.error_message, event.prompt_tokens, event.completion_tokens,
                  t.total_seconds);
    return;
  }
  spdlog::info(
      "[{}] {} finished: reason={} prompt_tokens={} completion_tokens={} queue={:.3f}s "
      "ttft={:.3f}s total={:.3f}s",
      id, kind, FinishReasonName(event.finish_reason), event.prompt_tokens,
      event.completion_tokens, t.queue_seconds, t.time_to_first_token_seconds, t.total_seconds);
}

// The client went away (or its deadline passed): stop the engine's work on the request
// and log how it ended.
grpc::Status AbandonRequest(grpc::ServerContext* context, RequestStream* stream, const char* kind,
                            const std::string& id) {
  const bool deadline_passed = context->deadline() <= std::chrono::system_clock::now();
  spdlog::info("[{}] {} {}; cancelling", id, kind,
               deadline_passed ? "deadline exceeded" : "cancelled by the client");
  stream->Cancel();
  const auto give_up = std::chrono::steady_clock::now() + kCancelGrace;
  GenerationEvent event;
  bool logged = false;
  while (!logged && std::chrono::steady_clock::now() < give_up) {
    if (stream->Next(&event, kPollInterval) && event.finished) {
      LogFinished(kind, id, event);
      logged = true;
    }
  }
  if (!logged) spdlog::warn("[{}] {} did not report its end after cancellation", id, kind);
  if (deadline_passed) return {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded"};
  return {grpc::StatusCode::CANCELLED, "call cancelled by the client"};
}

grpc::Status GenerationError(const GenerationEvent& event) {
  return {grpc::StatusCode::INTERNAL, event.error_message.empty()
                                          ? std::string("generation failed")
                                          : absl::StrCat("generation failed: ", event.error_message)};
}

}  // namespace

GenerationServiceImpl::GenerationServiceImpl(int32_t max_tokens_limit, int32_t default_max_tokens)
    : default_max_tokens_(default_max_tokens) {
  limits_.max_tokens_limit = max_tokens_limit;
}

void GenerationServiceImpl::AttachEngine(Engine* engine, const ModelDescription& description) {
  limits_.kv_methods.clear();
  for (const KvFormatDescription& format : description.kv_formats) {
    if (std::find(limits_.kv_methods.begin(), limits_.kv_methods.end(), format.method) ==
        limits_.kv_methods.end()) {
      limits_.kv_methods.push_back(format.method);
    }
    if (format.is_default) default_kv_method_ = format.method;
  }
  engine_.store(engine, std::memory_order_release);
}

void GenerationServiceImpl::BeginDraining() { draining_.store(true); }

grpc::Status GenerationServiceImpl::ReadyEngine(bool for_generation, Engine** engine) const {
  *engine = engine_.load(std::memory_order_acquire);
  if (*engine == nullptr) return {grpc::StatusCode::UNAVAILABLE, "model is loading"};
  if (for_generation && draining_.load()) {
    return {grpc::StatusCode::UNAVAILABLE, "server is draining"};
  }
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::StartRequest(const char* kind,
                                                 const v1::GenerateRequest& request,
                                                 const std::string& request_id,
                                                 std::shared_ptr<RequestStream>* stream) const {
  Engine* engine = nullptr;
  grpc::Status status = ReadyEngine(/*for_generation=*/true, &engine);
  if (status.ok()) status = ToGrpcStatus(ValidateGenerateRequest(request, limits_));
  if (status.ok()) {
    absl::StatusOr<std::shared_ptr<RequestStream>> submitted =
        engine->Submit(ToEngineRequest(request, request_id, default_max_tokens_));
    if (submitted.ok()) {
      *stream = *std::move(submitted);
    } else if (submitted.status().code() == absl::StatusCode::kUnavailable && draining_.load()) {
      status = {grpc::StatusCode::UNAVAILABLE, "server is draining"};
    } else {
      status = ToGrpcStatus(submitted.status());
    }
  }
  if (!status.ok()) {
    spdlog::warn("[{}] {} rejected: {}: {}", request_id, kind,
                 absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                 status.error_message());
    return status;
  }
  spdlog::debug("[{}] {} accepted: prompt {} {}, max_tokens={}", request_id, kind,
                request.prompt_case() == v1::GenerateRequest::kTokenIds
                    ? request.token_ids().ids_size()
                    : static_cast<int>(request.text().size()),
                request.prompt_case() == v1::GenerateRequest::kTokenIds ? "ids" : "bytes",
                request.sampling().max_tokens());
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::Generate(grpc::ServerContext* context,
                                             const v1::GenerateRequest* request,
                                             v1::GenerateResponse* response) {
  std::string id;
  std::shared_ptr<RequestStream> stream;
  grpc::Status status = ResolveRequestId(*request, &id);
  if (!status.ok()) {
    spdlog::warn("[{}] generate rejected: {}", id, status.error_message());
    return status;
  }
  status = StartRequest("generate", *request, id, &stream);
  if (!status.ok()) return status;

  response->set_request_id(id);
  response->set_kv_cache_method(request->kv_cache().method().empty()
                                    ? default_kv_method_
                                    : request->kv_cache().method());
  GenerationEvent event;
  while (true) {
    if (!NextEvent(context, stream.get(), &event)) {
      return AbandonRequest(context, stream.get(), "generate", id);
    }
    response->mutable_text()->append(event.text);
    response->mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    response->mutable_logprobs()->Add(event.logprobs.begin(), event.logprobs.end());
    if (!event.finished) continue;
    LogFinished("generate", id, event);
    if (event.finish_reason == FinishReason::kError) return GenerationError(event);
    response->set_finish_reason(ToProtoFinishReason(event.finish_reason));
    FillUsage(event, response->mutable_usage());
    FillTimings(event.timings, response->mutable_timings());
    return grpc::Status::OK;
  }
}

grpc::Status GenerationServiceImpl::GenerateStream(
    grpc::ServerContext* context, const v1::GenerateRequest* request,
    grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  std::string id;
  std::shared_ptr<RequestStream> stream;
  grpc::Status status = ResolveRequestId(*request, &id);
  if (!status.ok()) {
    spdlog::warn("[{}] stream rejected: {}", id, status.error_message());
    return status;
  }
  status = StartRequest("stream", *request, id, &stream);
  if (!status.ok()) return status;

  GenerationEvent event;
  while (true) {
    if (!NextEvent(context, stream.get(), &event)) {
      return AbandonRequest(context, stream.get(), "stream", id);
    }
    if (!event.finished && event.token_ids.empty() && event.text.empty()) continue;
    v1::GenerateStreamResponse chunk;
    chunk.set_request_id(id);
    chunk.set_text(event.text);
    chunk.mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    chunk.mutable_logprobs()->Add(event.logprobs.begin(), event.logprobs.end());
    if (event.finished) {
      chunk.set_finish_reason(ToProtoFinishReason(event.finish_reason));
      FillUsage(event, chunk.mutable_usage());
      FillTimings(event.timings, chunk.mutable_timings());
    }
    const bool written = writer->Write(chunk);
    if (event.finished) {
      LogFinished("stream", id, event);
      // The final chunk already says FINISH_REASON_ERROR; the status carries the message.
      if (event.finish_reason == FinishReason::kError) return GenerationError(event);
      return written ? grpc::Status::OK
                     : grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (!written) return AbandonRequest(context, stream.get(), "stream", id);
  }
}

grpc::Status GenerationServiceImpl::Tokenize(grpc::ServerContext* context,
                                             const v1::TokenizeRequest* request,
                                             v1::TokenizeResponse* response) {
  Engine* engine = nullptr;
  grpc::Status status = ReadyEngine(/*for_generation=*/false, &engine);
  if (!status.ok()) return status;
  const bool add_special = !request->has_add_special_tokens() || request->add_special_tokens();
  absl::StatusOr<std::vector<int32_t>> ids = engine->Tokenize(request->text(), add_special);
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_tokens(engine->TokenText(id));
  }
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::GetModelInfo(grpc::ServerContext* context,
                                                 const v1::GetModelInfoRequest* request,
                                                 v1::ModelInfo* response) {
  Engine* engine = nullptr;
  grpc::Status status = ReadyEngine(/*for_generation=*/false, &engine);
  if (!status.ok()) return status;
  FillModelInfo(engine->Describe(), engine->PoolUsage(), response);
  return grpc::Status::OK;
}

}  // namespace squat::server
