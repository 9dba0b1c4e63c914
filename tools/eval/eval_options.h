// Command line of squat-eval (torch-free).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace squat::eval {

struct EvalOptions {
  std::string model_dir;
  std::string text_path;
  std::string json_path;  // empty: no JSON file
  std::string device = "cpu";
  std::string dtype = "auto";
  std::vector<int64_t> contexts = {512, 1024, 2048};
  std::vector<std::string> methods = {"fp16", "kivi", "squat", "squat-post"};
  std::vector<int> bits = {2, 4};  // key bits, and value bits unless v_bits is set
  int v_bits = 0;                  // > 0: value bits of every quantized format
  // Windows per context length: one value for all, or one per context; 0: every window.
  std::vector<int64_t> max_windows = {4};
  double prefix_fraction = 0.5;  // share of each window prefilled; the rest is scored token by token
  bool isolated_attention = true;  // also feed the fp16 run's q/k/v to every quantized cache
  // KV parameters; the engine's defaults (runtime/engine/engine.cpp DefaultKvFormat, squat-spec 1).
  int64_t group_size = 32;       // G
  int64_t residual_length = 32;  // R
  int64_t block_size = 0;        // g; 0: head_dim / 2
  int64_t subspace_dim = 60;     // r (capped by the cache at head_dim and the prompt's rows)
  double lambda = 1e-3;
  // Needle-in-a-haystack.
  std::vector<int64_t> needle_contexts = {512, 1024, 2048};  // empty: no needle test
  std::vector<double> needle_depths = {0.1, 0.3, 0.5, 0.7, 0.9};
  int64_t needle_trials = 2;  // different secret numbers and haystack offsets per (context, depth)
  uint32_t seed = 1;
  int threads = 0;  // 0: LibTorch's default
};

// Parses argv; errors name the flag. "--help" returns a NotFound status whose message is the
// usage text.
// The window limit of contexts[index].
int64_t MaxWindowsFor(const EvalOptions& options, size_t index);

absl::StatusOr<EvalOptions> ParseEvalOptions(int argc, const char* const* argv);
std::string EvalUsage();

}  // namespace squat::eval
