// squat-dump-logits: runs the C++ Llama model over a token list and writes its float32
// logits [T, vocab] (raw little-endian) plus a JSON sidecar FILE.json with the shape, so
// that an outside reference (tools/hf_compare.py) can check them.
//
//   squat-dump-logits --model DIR --tokens 1,2,3 [--device cpu|cuda[:N]]
//                     [--dtype auto|float32|float16|bfloat16] [--incremental] --out FILE
//                     [--bench-decode N]
//
// Default: one forward over the whole prompt. --incremental feeds the tokens one at a time
// through the KV cache (the decode path) and stacks the per-step logits. --bench-decode N
// then also times N greedy decode steps after the prompt (logits copied to the host each
// step, as the engine does) and prints prefill and per-step milliseconds to stderr.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "kvcache/standalone_cache.h"
#include "runtime/model/llama_model.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/model/step_runner.h"

namespace {

struct Args {
  std::string model_dir;
  std::string tokens;
  std::string device = "cpu";
  std::string dtype = "auto";
  std::string out;
  std::string bench_decode = "0";  // decode steps to time
  bool incremental = false;
};

int Usage(const char* message) {
  std::cerr << "error: " << message << "\n"
            << "usage: squat-dump-logits --model DIR --tokens 1,2,3 [--device cpu|cuda[:N]]\n"
               "                         [--dtype auto|float32|float16|bfloat16] [--incremental]\n"
               "                         --out FILE [--bench-decode N]\n";
  return 2;
}

bool ParseArgs(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--incremental") {
      args->incremental = true;
      continue;
    }
    std::string* target = nullptr;
    if (flag == "--model") target = &args->model_dir;
    else if (flag == "--tokens") target = &args->tokens;
    else if (flag == "--device") target = &args->device;
    else if (flag == "--dtype") target = &args->dtype;
    else if (flag == "--out") target = &args->out;
    else if (flag == "--bench-decode") target = &args->bench_decode;
    if (target == nullptr) {
      *error = "unknown flag " + flag;
      return false;
    }
    if (i + 1 >= argc) {
      *error = flag + " needs a value";
      return false;
    }
    *target = argv[++i];
  }
  if (args->model_dir.empty() || args->tokens.empty() || args->out.empty()) {
    *error = "--model, --tokens and --out are required";
    return false;
  }
  return true;
}

bool ParseTokens(const std::string& text, std::vector<int64_t>* ids) {
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) return false;
    ids->push_back(id);
  }
  return !ids->empty();
}

double MillisecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// A full-precision cache for one sequence (throws like the model does on failure).
squat::kv::StandaloneCache NewCache(const squat::LlamaModel& model, int64_t max_tokens) {
  auto cache = squat::kv::StandaloneCache::Create(model.kv_shape(), squat::kv::FullPrecisionFormat(), max_tokens);
  TORCH_CHECK(cache.ok(), "KV cache: ", cache.status().ToString());
  return *std::move(cache);
}

// Prefill, then `steps` greedy decode steps; each step's logits go to the host like the
// engine's sampler input, which also makes each timing include the device work.
void BenchDecode(squat::LlamaModel& model, const std::vector<int64_t>& prompt, int64_t steps) {
  c10::InferenceMode inference;
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  auto run = [&](bool report) {
    auto cache = NewCache(model, prompt_len + steps);
    auto runner = squat::StepRunner::Create(model, cache.manager(), prompt_len, 1);
    TORCH_CHECK(runner.ok(), runner.status().ToString());
    const std::vector<int32_t> tokens(prompt.begin(), prompt.end());
    auto step = [&](const std::vector<int32_t>& rows) {
      squat::StepEntry entry;
      entry.cache = &*cache;
      entry.tokens = rows.data();
      entry.num_tokens = static_cast<int64_t>(rows.size());
      return (*runner)->Run({entry}).to(at::kCPU);
    };
    auto start = std::chrono::steady_clock::now();
    at::Tensor logits = step(tokens);
    const double prefill_ms = MillisecondsSince(start);
    start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) {
      logits = step({static_cast<int32_t>(logits.argmax(-1).item<int64_t>())});
    }
    if (report) {
      std::cerr << "bench: prompt " << prompt_len << " tokens, prefill " << prefill_ms << " ms; "
                << steps << " decode steps, " << MillisecondsSince(start) / steps
                << " ms/step (" << model.weight_bytes() / 1e9 << " GB of weights, "
                << c10::toString(model.dtype()) << ")\n";
    }
  };
  run(false);  // warm-up: allocator, kernels, library handles
  run(true);
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Usage(error.c_str());
  std::vector<int64_t> ids;
  if (!ParseTokens(args.tokens, &ids)) return Usage("--tokens must be comma-separated integers");
  int64_t bench_steps = 0;
  if (!absl::SimpleAtoi(args.bench_decode, &bench_steps) || bench_steps < 0) {
    return Usage("--bench-decode needs a non-negative integer");
  }

  auto config = squat::LoadModelConfig(args.model_dir + "/config.json");
  if (!config.ok()) {
    std::cerr << "error: " << config.status() << "\n";
    return 1;
  }
  auto checkpoint = squat::CheckpointReader::Open(args.model_dir);
  if (!checkpoint.ok()) {
    std::cerr << "error: " << checkpoint.status() << "\n";
    return 1;
  }
  squat::ModelLoadOptions options;
  options.device = args.device;
  options.dtype = args.dtype;
  auto model = squat::LlamaModel::Load(**checkpoint, *config, options);
  if (!model.ok()) {
    std::cerr << "error: " << model.status() << "\n";
    return 1;
  }

  at::Tensor logits;
  try {
    c10::InferenceMode inference;
    const int64_t count = static_cast<int64_t>(ids.size());
    const std::vector<int32_t> tokens(ids.begin(), ids.end());
    auto cache = NewCache(**model, count);
    if (args.incremental) {
      std::vector<at::Tensor> rows;
      for (int64_t t = 0; t < count; ++t) {
        rows.push_back(squat::ForwardSequence(**model, cache.manager(), *cache, {tokens[t]}, /*last_only=*/true));
      }
      logits = at::cat(rows, 0);
    } else {
      logits = squat::ForwardSequence(**model, cache.manager(), *cache, tokens, /*last_only=*/false);
    }
    logits = logits.to(at::kCPU, at::kFloat).contiguous();
  } catch (const c10::Error& e) {
    std::cerr << "error: forward failed: " << e.what_without_backtrace() << "\n";
    return 1;
  }

  if (bench_steps > 0) {
    try {
      BenchDecode(**model, ids, bench_steps);
    } catch (const c10::Error& e) {
      std::cerr << "error: decode benchmark failed: " << e.what_without_backtrace() << "\n";
      return 1;
    }
  }

  // x86-64 and aarch64 are little-endian, so the in-memory floats are the file format.
  std::ofstream out(args.out, std::ios::binary);
  out.write(static_cast<const char*>(logits.data_ptr()),
            static_cast<std::streamsize>(logits.numel() * sizeof(float)));
  std::ofstream sidecar(args.out + ".json");
  sidecar << "{\"shape\": [" << logits.size(0) << ", " << logits.size(1)
          << "], \"dtype\": \"float32\", \"mode\": \""
          << (args.incremental ? "incremental" : "full") << "\", \"device\": \"" << args.device
          << "\", \"compute_dtype\": \"" << c10::toString((*model)->dtype()) << "\"}\n";
  if (!out || !sidecar) {
    std::cerr << "error: cannot write " << args.out << "\n";
    return 1;
  }
  return 0;
}
