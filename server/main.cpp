// squat-server: loads the model, serves squat.v1.GenerationService, grpc.health.v1 and
// reflection, exports Prometheus metrics, and drains gracefully on SIGTERM / SIGINT.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpc/support/log.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/engine/engine.h"
#include "runtime/log/log.h"
#include "server/generation_service.h"
#include "server/memory_budget.h"
#include "server/server_flags_security.h"
#include "server/tls_options.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/server_flags.h"
#include "server/shutdown_signal.h"

#ifndef SQUAT_VERSION
#define SQUAT_VERSION "unknown"
#endif

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

// gRPC's own lines (errors only, unless GRPC_VERBOSITY says otherwise) go through our logger,
// so that a JSON log stays one object per line.
void LogFromGrpc(gpr_log_func_args* args) {
  const log::Fields fields = {{"source", "grpc"}, {"file", args->file}, {"line", args->line}};
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    log::Error(args->message, fields);
  } else if (args->severity == GPR_LOG_SEVERITY_INFO) {
    log::Info(args->message, fields);
  } else {
    log::Debug(args->message, fields);
  }
}

// The /metrics endpoint, or null when disabled or (for the default port only) not bindable.
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetrics(const ServerConfig& config,
                                                                const ServerMetrics* metrics) {
  if (config.metrics_port == 0) {
    log::Info("metrics endpoint disabled (--metrics-port 0)");
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> exporter = MetricsHttpServer::Start(
      config.metrics_address, config.metrics_port, [metrics] { return metrics->ScrapeText(); });
  if (exporter.ok()) {
    log::Info(absl::StrCat("serving metrics on ", (*exporter)->url()));
    return exporter;
  }
  if (config.metrics_port_required) return exporter.status();
  log::Warn(absl::StrCat(exporter.status().message(),
                         "; running without a metrics endpoint (pass --metrics-port to choose one)"));
  return nullptr;
}

int Run(int argc, char** argv) {
  BlockShutdownSignals();  // before gRPC or the engine start any thread
  absl::StatusOr<ServerConfig> parsed = ParseServerCommandLine(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "squat-server: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<SecurityOptions> security = ReadSecurityFlags();
  if (!security.ok()) {
    std::fprintf(stderr, "squat-server: %s\n", std::string(security.status().message()).c_str());
    return 2;
  }
  parsed->engine.max_prompt_tokens = security->max_prompt_tokens;
  if (absl::Status engine = ValidateEngineOptions(parsed->engine); !engine.ok()) {  // max_prompt_tokens too
    std::fprintf(stderr, "squat-server: %s\n", std::string(engine.message()).c_str());
    return 2;
  }
  const ServerConfig& config = *parsed;
  log::Configure(config.log_format, config.log_level);
  gpr_set_log_function(LogFromGrpc);
  log::Info("squat-server starting",
            {{"version", SQUAT_VERSION},
             {"model", config.engine.model_dir},
             {"address", config.address},
             {"device", config.engine.device},
             {"dtype", config.engine.dtype},
             {"kv_format", config.engine.kv_format}});

  // Metrics are served from the start; the engine's gauges appear once the model is loaded.
  auto metrics = std::make_unique<ServerMetrics>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> exporter = StartMetrics(config, metrics.get());
  if (!exporter.ok()) {
    log::Error(std::string(exporter.status().message()));
    return 1;
  }
  EngineOptions engine_options = config.engine;
  engine_options.observer = metrics.get();

  // The server listens (health NOT_SERVING) while the model loads.
  GenerationServiceImpl service;
  service.SetMetrics(metrics.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = BuildServerCredentials(*security);
  if (!credentials.ok()) {
    log::Error(absl::StrCat("cannot set up transport security: ", credentials.status().message()));
    return 1;
  }
  builder.AddListeningPort(config.address, *credentials, &bound_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(security->max_message_bytes));
  service.SetMaxPromptBytes(security->max_prompt_bytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    log::Error(absl::StrCat("cannot listen on ", config.address));
    return 1;
  }
  SetServing(server.get(), false);
  log::Info(absl::StrCat("listening on ", config.address, " (port ", bound_port, "); loading the model"));

  const auto load_start = std::chrono::steady_clock::now();
  // Refuse a model that cannot fit before allocating any of it.
  if (absl::Status fits = CheckMemoryBudget(config.engine, security->max_memory_bytes); !fits.ok()) {
    log::Error(absl::StrCat("cannot start the engine for ", config.engine.model_dir, ": ", fits.ToString()));
    server->Shutdown();
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Engine>> created = absl::InternalError("not started");
  try {
    created = Engine::Create(engine_options);
  } catch (const std::exception& e) {  // e.g. bad_alloc: exit 1 with a message, not an abort
    created = absl::InternalError(absl::StrCat("unexpected exception: ", e.what()));
  }
  if (!created.ok()) {
    log::Error(absl::StrCat("cannot start the engine for ", config.engine.model_dir, ": ",
                            created.status().ToString()));
    server->Shutdown();
    return 1;
  }
  std::unique_ptr<Engine> engine = *std::move(created);
  ModelDescription description = engine->Describe();
  metrics->AttachEngine(engine.get(), description, SQUAT_VERSION);
  service.AttachEngine(engine.get());
  SetServing(server.get(), true);
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  log::Info(absl::StrFormat("serving %s on %s: %d layers, vocab %d, max_model_len %d, dtype %s, "
                            "device %s, loaded in %.2fs",
                            description.model_name, config.address, description.num_layers,
                            description.vocab_size, description.max_model_len, description.dtype,
                            description.device, load_seconds));

  const int signal_number = WaitForShutdownSignal();
  ExitOnSecondSignal();
  SetServing(server.get(), false);
  service.BeginDraining();
  engine->StopAccepting();
  log::Info(absl::StrCat("received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
                         ": health NOT_SERVING, new requests refused; draining (up to ",
                         config.drain_timeout_s, "s)"));
  if (engine->WaitIdle(std::chrono::seconds(config.drain_timeout_s))) {
    log::Info("drained: no request left");
  } else {
    log::Warn(absl::StrCat("drain timeout after ", config.drain_timeout_s,
                           "s; cancelling the requests left"));
  }
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  engine->Shutdown();
  server->Wait();
  metrics->DetachEngine();  // scrapes stop reading the engine before it is destroyed
  log::Info("squat-server stopped");
  return 0;
}

}  // namespace
}  // namespace squat::server

int main(int argc, char** argv) { return squat::server::Run(argc, argv); }
