#include "server/server_flags.h"

#include <algorithm>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "spdlog/spdlog.h"

// Engine flags default to EngineOptions' defaults (runtime/engine/engine.h is their one home).
namespace {
const squat::EngineOptions kEngineDefaults;
}  // namespace

ABSL_FLAG(std::string, model, "models/tiny-english", "Model directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, address, "127.0.0.1:50051", "host:port to listen on");
ABSL_FLAG(std::string, device, kEngineDefaults.device, "Device: cpu or cuda[:N]");
ABSL_FLAG(std::string, dtype, kEngineDefaults.dtype, "Weight dtype: auto, float32, float16, bfloat16");
ABSL_FLAG(std::string, kv_format, kEngineDefaults.kv_format,
          "Default KV-cache format: squat (pre-RoPE keys), squat-post, kivi, or fp16 (full precision)");
ABSL_FLAG(int32_t, kv_k_bits, kEngineDefaults.kv_k_bits, "Key bits of the quantized formats (2 or 4)");
ABSL_FLAG(int32_t, kv_v_bits, kEngineDefaults.kv_v_bits, "Value bits of the quantized formats (2 or 4)");
ABSL_FLAG(int32_t, kv_group_size, kEngineDefaults.kv_group_size, "G: tokens per key scale group, channels per value scale group");
ABSL_FLAG(int32_t, kv_residual_length, kEngineDefaults.kv_residual_length, "R: full-precision residual window (multiple of G)");
ABSL_FLAG(int32_t, kv_block_size, kEngineDefaults.kv_block_size, "g: SQuat channel block (divides head_dim); 0: head_dim / 2");
ABSL_FLAG(int32_t, kv_subspace_dim, kEngineDefaults.kv_subspace_dim, "r: rank of the SQuat query subspace");
ABSL_FLAG(double, kv_lambda, kEngineDefaults.kv_lambda, "lambda: weight of the SQuat subspace penalty");
ABSL_FLAG(bool, kv_shared_subspace, kEngineDefaults.kv_shared_subspace,
          "Share one SQuat subspace (from the first prompt) across requests instead of one per request");
ABSL_FLAG(int64_t, kv_pool_mib, 0,
          "KV page pool size in MiB (one allocation at start); 0: 1024 on CPU, the --gpu-memory-utilization "
          "share on CUDA");
ABSL_FLAG(double, gpu_memory_utilization, kEngineDefaults.gpu_memory_utilization,
          "CUDA: share of the GPU's memory for weights + workspace + KV pool (the pool gets the rest)");
ABSL_FLAG(int32_t, max_model_len, kEngineDefaults.max_model_len, "Max tokens per sequence; 0: the model's max_position_embeddings");
ABSL_FLAG(int32_t, default_max_tokens, kEngineDefaults.default_max_tokens, "max_tokens of a request that leaves it 0");
ABSL_FLAG(int32_t, max_tokens_limit, kEngineDefaults.max_tokens_limit, "Requests asking for more tokens are rejected");
ABSL_FLAG(int32_t, max_waiting, kEngineDefaults.max_waiting, "Queued requests beyond this are rejected (RESOURCE_EXHAUSTED)");
ABSL_FLAG(int32_t, max_num_seqs, kEngineDefaults.max_num_seqs, "Sequences running (holding KV pages) at once");
ABSL_FLAG(int32_t, max_num_batched_tokens, kEngineDefaults.max_num_batched_tokens,
          "Tokens fed to the model per engine step: prompt chunks plus one per decoding sequence");
ABSL_FLAG(int32_t, max_prefill_chunk, kEngineDefaults.max_prefill_chunk, "Prompt tokens one sequence feeds per step (longer prompts take several)");
ABSL_FLAG(int32_t, drain_timeout_s, 30, "Seconds to let in-flight requests finish on SIGTERM");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error, critical or off");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines as text, or json (one object per line with time, level, msg, request_id, ...)");
ABSL_FLAG(int32_t, metrics_port, 8000,
          "Port of the Prometheus /metrics endpoint; 0: no endpoint. If the default port is taken the "
          "server warns and runs without it; an explicitly given port that cannot be bound is an error");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0", "Address the /metrics endpoint listens on");

namespace squat::server {
namespace {

// absl flag names are C identifiers; users type the documented --kebab-case names.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& arg = args[i];
    if (arg == "--") break;  // everything after is positional
    if (arg.size() < 3 || arg[0] != '-') continue;
    const size_t name_end = std::min(arg.find('='), arg.size());
    const size_t dashes = arg[1] == '-' ? 2 : 1;
    const std::string name =
        absl::StrReplaceAll(arg.substr(dashes, name_end - dashes), {{"-", "_"}});
    // Unknown names keep the user's spelling for absl's error message.
    if (absl::FindCommandLineFlag(name) == nullptr) continue;
    arg = absl::StrCat(arg.substr(0, dashes), name, arg.substr(name_end));
  }
  return args;
}

// Whether the normalized command line sets flag `name` (absl keeps that to itself).
bool FlagOnCommandLine(const std::vector<std::string>& args, const std::string& name) {
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    for (const char* dashes : {"-", "--"}) {
      const std::string spelled = absl::StrCat(dashes, name);
      if (args[i] == spelled || absl::StartsWith(args[i], spelled + "=")) return true;
    }
  }
  return false;
}

bool IsValidLogLevel(const std::string& level) {
  // spdlog maps unknown names to "off", so accept "off" only when spelled out.
  return level == "off" || spdlog::level::from_str(level) != spdlog::level::off;
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerCommandLine(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gRPC LLM inference server (squat.v1.GenerationService).\n"
      "Flags may be spelled --kv-format or --kv_format.");
  // --help lists this file's flags (absl's default looks for a file named after the binary).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "server_flags");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> arg_ptrs;
  for (std::string& arg : args) arg_ptrs.push_back(arg.data());
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  if (positional.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected positional argument '", positional[1], "'"));
  }

  ServerConfig config;
  config.address = absl::GetFlag(FLAGS_address);
  config.drain_timeout_s = absl::GetFlag(FLAGS_drain_timeout_s);
  config.log_level = absl::GetFlag(FLAGS_log_level);
  const std::string log_format = absl::GetFlag(FLAGS_log_format);
  if (!log::ParseFormat(log_format, &config.log_format)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-format '", log_format, "' is not one of text, json"));
  }
  config.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  config.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  config.metrics_port_required = FlagOnCommandLine(args, "metrics_port");
  if (config.metrics_port < 0 || config.metrics_port > 65535) {
    return absl::InvalidArgumentError("--metrics-port must be in [0, 65535] (0: no endpoint)");
  }
  if (config.metrics_port != 0 && config.metrics_address.empty()) {
    return absl::InvalidArgumentError("--metrics-address is empty");
  }
  EngineOptions& engine = config.engine;
  engine.model_dir = absl::GetFlag(FLAGS_model);
  engine.device = absl::GetFlag(FLAGS_device);
  engine.dtype = absl::GetFlag(FLAGS_dtype);
  engine.kv_format = absl::GetFlag(FLAGS_kv_format);
  engine.kv_k_bits = absl::GetFlag(FLAGS_kv_k_bits);
  engine.kv_v_bits = absl::GetFlag(FLAGS_kv_v_bits);
  engine.kv_group_size = absl::GetFlag(FLAGS_kv_group_size);
  engine.kv_residual_length = absl::GetFlag(FLAGS_kv_residual_length);
  engine.kv_block_size = absl::GetFlag(FLAGS_kv_block_size);
  engine.kv_subspace_dim = absl::GetFlag(FLAGS_kv_subspace_dim);
  engine.kv_lambda = absl::GetFlag(FLAGS_kv_lambda);
  engine.kv_shared_subspace = absl::GetFlag(FLAGS_kv_shared_subspace);
  if (absl::GetFlag(FLAGS_kv_pool_mib) < 0) return absl::InvalidArgumentError("--kv-pool-mib must be >= 0");
  engine.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  // The shift below must not overflow (2^43 MiB = 8 EiB; no machine has that).
  if (absl::GetFlag(FLAGS_kv_pool_mib) > (int64_t{1} << 42)) {
    return absl::InvalidArgumentError("--kv-pool-mib is larger than any memory (at most 2^42)");
  }
  engine.kv_pool_bytes = absl::GetFlag(FLAGS_kv_pool_mib) << 20;
  engine.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  engine.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  engine.max_tokens_limit = absl::GetFlag(FLAGS_max_tokens_limit);
  engine.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  engine.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  engine.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  engine.max_prefill_chunk = absl::GetFlag(FLAGS_max_prefill_chunk);

  if (config.address.empty()) return absl::InvalidArgumentError("--address is empty");
  if (absl::Status engine_status = ValidateEngineOptions(engine); !engine_status.ok()) return engine_status;
  if (config.drain_timeout_s < 0) {
    return absl::InvalidArgumentError("--drain-timeout-s must be >= 0");
  }
  if (!IsValidLogLevel(config.log_level)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-level '", config.log_level,
        "' is not one of trace, debug, info, warn, error, critical, off"));
  }
  return config;
}

}  // namespace squat::server
