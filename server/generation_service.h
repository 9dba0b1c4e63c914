// squat.v1.GenerationService on the synchronous gRPC API. Handler threads only move
// events from the engine's per-request streams to the wire; they never touch tensors. Every
// generation call, however it ends, logs one last line and feeds the request metrics once.
#pragma once

#include <atomic>
#include <string>

#include <grpcpp/grpcpp.h>

#include "runtime/engine/engine.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "squat/v1/generation.grpc.pb.h"

namespace squat::server {

class CallRecord;  // generation_service.cpp

class GenerationServiceImpl final : public v1::GenerationService::Service {
 public:
  // The service starts before the model is loaded and answers UNAVAILABLE until
  // AttachEngine.
  GenerationServiceImpl() = default;

  // Publishes the loaded engine (not owned; it must outlive the gRPC server).
  void AttachEngine(Engine* engine);
  // From now on new generation calls get UNAVAILABLE "server is draining".
  void BeginDraining();
  // Request-level metrics (not owned; must outlive the service). Set before serving.
  void SetMetrics(ServerMetrics* metrics) { metrics_ = metrics; }
  // Text prompts above this many bytes get INVALID_ARGUMENT (0: no limit). Set before serving.
  void SetMaxPromptBytes(int64_t bytes) { max_prompt_bytes_ = bytes; }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  // The engine, or UNAVAILABLE while loading (and, for generation, while draining).
  grpc::Status ReadyEngine(bool for_generation, Engine** engine) const;
  // Resolves the request id (recorded on `call`), validates and submits; on success *stream is
  // the request's event queue and `call` counts the request as accepted.
  grpc::Status StartRequest(const v1::GenerateRequest& request, CallRecord* call, std::string* request_id,
                            std::shared_ptr<RequestStream>* stream) const;
  grpc::Status RunGenerate(grpc::ServerContext* context, const v1::GenerateRequest& request,
                           v1::GenerateResponse* response, CallRecord* call);
  grpc::Status RunGenerateStream(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                 grpc::ServerWriter<v1::GenerateStreamResponse>* writer,
                                 CallRecord* call);

  int64_t max_prompt_bytes_ = 0;
  std::atomic<Engine*> engine_{nullptr};
  std::atomic<bool> draining_{false};
  ServerMetrics* metrics_ = nullptr;
};

}  // namespace squat::server
