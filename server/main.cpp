// squat-server: loads the model, serves squat.v1.GenerationService, grpc.health.v1 and
// reflection, and drains gracefully on SIGTERM / SIGINT.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "runtime/engine.h"
#include "server/generation_service.h"
#include "server/server_flags.h"
#include "server/shutdown_signal.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace squat::server {
namespace {

// How long grpc::Server::Shutdown lets handlers write their last messages once the engine
// is idle (or the drain timed out) before it cancels the calls still open.
constexpr std::chrono::seconds kShutdownGrace(5);
constexpr char kServiceName[] = "squat.v1.GenerationService";

void SetServing(grpc::Server* server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

void SetUpLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("squat-server");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::info);
}

int Run(int argc, char** argv) {
  BlockShutdownSignals();  // before gRPC or the engine start any thread
  absl::StatusOr<ServerConfig> parsed = ParseServerCommandLine(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "squat-server: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  const ServerConfig& config = *parsed;
  SetUpLogging(config.log_level);
  spdlog::info("squat-server starting: model={} address={} device={} dtype={} kv_format={}",
               config.engine.model_dir, config.address, config.engine.device,
               config.engine.dtype, config.engine.kv_format);

  // The server listens (health NOT_SERVING) while the model loads.
  GenerationServiceImpl service(config.engine.max_tokens_limit, config.engine.default_max_tokens);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(config.address, grpc::InsecureServerCredentials(), &bound_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    spdlog::error("cannot listen on {}", config.address);
    return 1;
  }
  SetServing(server.get(), false);
  spdlog::info("listening on {} (port {}); loading the model", config.address, bound_port);

  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Engine>> created = Engine::Create(config.engine);
  if (!created.ok()) {
    spdlog::error("cannot start the engine for {}: {}", config.engine.model_dir,
                  created.status().ToString());
    server->Shutdown();
    return 1;
  }
  std::unique_ptr<Engine> engine = *std::move(created);
  ModelDescription description = engine->Describe();
  service.AttachEngine(engine.get(), description);
  SetServing(server.get(), true);
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  spdlog::info("serving {} on {}: {} layers, vocab {}, max_model_len {}, dtype {}, device {}, "
               "loaded in {:.2f}s",
               description.model_name, config.address, description.num_layers,
               description.vocab_size, description.max_model_len, description.dtype,
               description.device, load_seconds);

  const int signal_number = WaitForShutdownSignal();
  ExitOnSecondSignal();
  SetServing(server.get(), false);
  service.BeginDraining();
  engine->StopAccepting();
  spdlog::info("received {}: health NOT_SERVING, new requests refused; draining (up to {}s)",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT", config.drain_timeout_s);
  if (engine->WaitIdle(std::chrono::seconds(config.drain_timeout_s))) {
    spdlog::info("drained: no request left");
  } else {
    spdlog::warn("drain timeout after {}s; cancelling the requests left", config.drain_timeout_s);
  }
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  engine->Shutdown();
  server->Wait();
  spdlog::info("squat-server stopped");
  return 0;
}

}  // namespace
}  // namespace squat::server

int main(int argc, char** argv) { return squat::server::Run(argc, argv); }
