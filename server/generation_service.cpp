#include "server/generation_service.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "runtime/log/log.h"
#include "server/proto_conversion.h"
#include "server/status_mapping.h"

namespace squat::server {
namespace {

// Handlers wake up this often to notice a cancelled call or a passed deadline.
constexpr std::chrono::milliseconds kPollInterval(50);
// After the client is gone, how long to wait for the engine's final event (to log the
// request's outcome); the engine frees the request's pages at its next step regardless.
constexpr std::chrono::seconds kCancelGrace(5);
constexpr std::chrono::milliseconds kDeadlineSlack(250);
constexpr size_t kMaxRequestIdLength = 128;

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

grpc::Status GenerationError(const GenerationEvent& event) {
  return {grpc::StatusCode::INTERNAL, event.error_message.empty()
                                          ? std::string("generation failed")
                                          : absl::StrCat("generation failed: ", event.error_message)};
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

// One generation call from arrival to its status. End() logs the call's last line (finished:
// reason, tokens, timings; or rejected: code, message) and feeds the metrics, exactly once on
// every path: success, engine error, client cancellation, deadline, refusal. Handlers return
// through End().
class CallRecord {
 public:
  CallRecord(const char* kind, ServerMetrics* metrics) : kind_(kind), metrics_(metrics) {}
  CallRecord(const CallRecord&) = delete;
  CallRecord& operator=(const CallRecord&) = delete;

  const char* kind() const { return kind_; }
  const std::string& id() const { return id_; }
  void SetId(std::string id) { id_ = std::move(id); }

  // The engine accepted the request in KV format `format` (its metrics label).
  void Accepted(std::string format) {
    accepted_ = true;
    format_ = std::move(format);
    if (metrics_ != nullptr) request_metrics_.emplace(metrics_->StartRequest(format_));
  }

  // Every event taken from the request's stream, in order.
  void OnEvent(const GenerationEvent& event) {
    const auto tokens = static_cast<int64_t>(event.token_ids.size());
    tokens_seen_ += tokens;
    if (request_metrics_.has_value()) request_metrics_->OnTokens(tokens, event.time_seconds);
    if (event.finished) {
      finished_ = true;
      final_reason_ = event.finish_reason;
      final_prompt_tokens_ = event.prompt_tokens;
      final_completion_tokens_ = event.completion_tokens;
      final_timings_ = event.timings;
    }
  }
  bool finished() const { return finished_; }

  grpc::Status End(grpc::Status status) {
    const std::string code = CodeName(status.error_code());
    if (metrics_ != nullptr && !status.ok()) metrics_->CountError(code);
    if (!accepted_) {
      log::Warn(absl::StrCat(kind_, " rejected"),
                {{log::kRequestIdKey, id_}, {"status", code}, {"error", status.error_message()}});
      return status;
    }
    // Without a final event (the engine did not report the end of an abandoned request in
    // time) the request counts as cancelled, with the tokens seen.
    const FinishReason reason = finished_ ? final_reason_ : FinishReason::kCancelled;
    if (request_metrics_.has_value()) {
      request_metrics_->OnEnd(reason, static_cast<int32_t>(final_prompt_tokens_), final_timings_);
    }
    log::Fields fields = {{log::kRequestIdKey, id_},
                          {"finish_reason", FinishReasonName(reason)},
                          {"prompt_tokens", final_prompt_tokens_},
                          {"completion_tokens", finished_ ? final_completion_tokens_ : tokens_seen_},
                          {"queue_seconds", final_timings_.queue_seconds},
                          {"ttft_seconds", final_timings_.time_to_first_token_seconds},
                          {"total_seconds", final_timings_.total_seconds},
                          {"kv_format", format_},
                          {"status", code}};
    if (!status.ok()) fields.emplace_back("error", status.error_message());
    if (reason == FinishReason::kError) {
      log::Error(absl::StrCat(kind_, " finished"), fields);
    } else {
      log::Info(absl::StrCat(kind_, " finished"), fields);
    }
    return status;
  }

 private:
  const char* const kind_;
  ServerMetrics* const metrics_;
  std::string id_;
  bool accepted_ = false;
  std::string format_;
  std::optional<RequestMetrics> request_metrics_;
  int64_t tokens_seen_ = 0;
  bool finished_ = false;
  FinishReason final_reason_ = FinishReason::kNone;
  int64_t final_prompt_tokens_ = 0;
  int64_t final_completion_tokens_ = 0;
  Timings final_timings_;
};

namespace {

// The client went away (or its deadline passed): stop the engine's work on the request and
// wait a while for its final event, so that the last log line and the metrics say how it
// ended.
grpc::Status AbandonRequest(grpc::ServerContext* context, RequestStream* stream, CallRecord* call) {
  // A client's deadline timer cancels the call a moment before the server's copy of the
  // deadline (which started when the call arrived) passes: a call cut short this close to its
  // deadline ended by the deadline.
  const bool deadline_passed =
      context->deadline() <= std::chrono::system_clock::now() + kDeadlineSlack;
  log::Info(absl::StrCat(call->kind(), deadline_passed ? " deadline exceeded" : " cancelled by the client",
                         "; cancelling"),
            {{log::kRequestIdKey, call->id()}});
  stream->Cancel();
  const auto give_up = std::chrono::steady_clock::now() + kCancelGrace;
  GenerationEvent event;
  while (!call->finished() && std::chrono::steady_clock::now() < give_up) {
    if (stream->Next(&event, kPollInterval)) call->OnEvent(event);
  }
  if (!call->finished()) {
    log::Warn(absl::StrCat(call->kind(), " did not report its end after cancellation"),
              {{log::kRequestIdKey, call->id()}});
  }
  if (deadline_passed) return {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded"};
  return {grpc::StatusCode::CANCELLED, "call cancelled by the client"};
}

}  // namespace

void GenerationServiceImpl::AttachEngine(Engine* engine) { engine_.store(engine, std::memory_order_release); }

void GenerationServiceImpl::BeginDraining() { draining_.store(true); }

grpc::Status GenerationServiceImpl::ReadyEngine(bool for_generation, Engine** engine) const {
  *engine = engine_.load(std::memory_order_acquire);
  if (*engine == nullptr) return {grpc::StatusCode::UNAVAILABLE, "model is loading"};
  if (for_generation && draining_.load()) {
    return {grpc::StatusCode::UNAVAILABLE, "server is draining"};
  }
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::StartRequest(const v1::GenerateRequest& request, CallRecord* call,
                                                 std::string* request_id,
                                                 std::shared_ptr<RequestStream>* stream) const {
  grpc::Status status = ResolveRequestId(request, request_id);
  call->SetId(*request_id);
  if (!status.ok()) return status;
  Engine* engine = nullptr;
  status = ReadyEngine(/*for_generation=*/true, &engine);
  if (status.ok()) status = ToGrpcStatus(ValidateGenerateRequest(request, max_prompt_bytes_));
  if (!status.ok()) return status;
  absl::StatusOr<std::shared_ptr<RequestStream>> submitted = engine->Submit(ToEngineRequest(request, *request_id));
  if (!submitted.ok()) {
    if (submitted.status().code() == absl::StatusCode::kUnavailable && draining_.load()) {
      return {grpc::StatusCode::UNAVAILABLE, "server is draining"};
    }
    return ToGrpcStatus(submitted.status());
  }
  *stream = *std::move(submitted);
  const bool ids = request.prompt_case() == v1::GenerateRequest::kTokenIds;
  const AcceptedRequest& accepted = (*stream)->accepted();
  call->Accepted(accepted.kv_format);
  log::Debug(absl::StrCat(call->kind(), " accepted"),
             {{log::kRequestIdKey, *request_id},
              {ids ? "prompt_ids" : "prompt_bytes",
               ids ? request.token_ids().ids_size() : static_cast<int>(request.text().size())},
              {"max_tokens", accepted.max_tokens},
              {"kv_format", accepted.kv_format}});
  return grpc::Status::OK;
}

grpc::Status GenerationServiceImpl::Generate(grpc::ServerContext* context,
                                             const v1::GenerateRequest* request,
                                             v1::GenerateResponse* response) {
  CallRecord call("generate", metrics_);
  return call.End(RunGenerate(context, *request, response, &call));
}

grpc::Status GenerationServiceImpl::RunGenerate(grpc::ServerContext* context,
                                                const v1::GenerateRequest& request,
                                                v1::GenerateResponse* response, CallRecord* call) {
  std::string id;
  std::shared_ptr<RequestStream> stream;
  if (grpc::Status status = StartRequest(request, call, &id, &stream); !status.ok()) return status;

  response->set_request_id(id);
  response->set_kv_cache_method(stream->accepted().kv_method);
  GenerationEvent event;
  while (true) {
    if (!NextEvent(context, stream.get(), &event)) {
      return AbandonRequest(context, stream.get(), call);
    }
    call->OnEvent(event);
    response->mutable_text()->append(event.text);
    response->mutable_token_ids()->Add(event.token_ids.begin(), event.token_ids.end());
    response->mutable_logprobs()->Add(event.logprobs.begin(), event.logprobs.end());
    if (!event.finished) continue;
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
  CallRecord call("stream", metrics_);
  return call.End(RunGenerateStream(context, *request, writer, &call));
}

grpc::Status GenerationServiceImpl::RunGenerateStream(
    grpc::ServerContext* context, const v1::GenerateRequest& request,
    grpc::ServerWriter<v1::GenerateStreamResponse>* writer, CallRecord* call) {
  std::string id;
  std::shared_ptr<RequestStream> stream;
  if (grpc::Status status = StartRequest(request, call, &id, &stream); !status.ok()) return status;

  GenerationEvent event;
  while (true) {
    if (!NextEvent(context, stream.get(), &event)) {
      return AbandonRequest(context, stream.get(), call);
    }
    call->OnEvent(event);
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
      // The final chunk already says FINISH_REASON_ERROR; the status carries the message.
      if (event.finish_reason == FinishReason::kError) return GenerationError(event);
      return written ? grpc::Status::OK
                     : grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (!written) return AbandonRequest(context, stream.get(), call);
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
