// squat.v1.GenerationService on the synchronous gRPC API. Handler threads only move
// events from the engine's per-request streams to the wire; they never touch tensors.
#pragma once

#include <atomic>
#include <string>

#include <grpcpp/grpcpp.h>

#include "runtime/engine.h"
#include "server/request_validation.h"
#include "squat/v1/generation.grpc.pb.h"

namespace squat::server {

class GenerationServiceImpl final : public v1::GenerationService::Service {
 public:
  // The service starts before the model is loaded and answers UNAVAILABLE until
  // AttachEngine.
  GenerationServiceImpl(int32_t max_tokens_limit, int32_t default_max_tokens);

  // Publishes the loaded engine (not owned; it must outlive the gRPC server).
  void AttachEngine(Engine* engine, const ModelDescription& description);
  // From now on new generation calls get UNAVAILABLE "server is draining".
  void BeginDraining();

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
  // Validates and submits; on success *stream is the request's event queue.
  grpc::Status StartRequest(const char* kind, const v1::GenerateRequest& request,
                            const std::string& request_id,
                            std::shared_ptr<RequestStream>* stream) const;

  const int32_t default_max_tokens_;
  // Written by AttachEngine before engine_ is published (release/acquire on engine_).
  RequestLimits limits_;
  std::string default_kv_method_;
  std::atomic<Engine*> engine_{nullptr};
  std::atomic<bool> draining_{false};
};

}  // namespace squat::server
