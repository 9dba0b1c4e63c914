// Helpers shared by the tests that run the model: scratch directories, checkpoints written
// by the project's generator, loading, random prompts and a standalone KV cache.
#pragma once

#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvcache/standalone_cache.h"
#include "runtime/model/llama_model.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/model/step_runner.h"

namespace squat {

// Weight scale of the generated checkpoints: logits spread over ~10 nats (0.02, the
// generator's default, leaves them near-uniform) while float32 error stays ~1e-5.
constexpr const char* kInitStdFlag = " --init-std 0.1";

// A scratch directory, removed with its contents. POSIX calls, not std::filesystem: the
// pip LibTorch on the GPU machine exports its own statically linked std::filesystem symbols
// (pytorch/pytorch#133437), and calls that bind to them corrupt the heap.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/squat_test_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + pattern);
    path_ = pattern;
  }
  ~TempDir() {
    nftw(path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return remove(p); },
         16, FTW_DEPTH | FTW_PHYS);
  }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline bool FileExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Runs the project's checkpoint generator (weights at kInitStdFlag); returns the directory.
inline std::string Generate(const TempDir& tmp, const std::string& name, const std::string& flags) {
  const std::string dir = tmp.Sub(name);
  const std::string command = std::string(SQUAT_BINARY_DIR "/tools/squat-make-checkpoint ") +
                              flags + kInitStdFlag + " --out '" + dir + "' > '" + dir + ".log' 2>&1";
  const int rc = std::system(command.c_str());
  std::ifstream log(dir + ".log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_EQ(rc, 0) << command << "\n" << text.str();
  return dir;
}

struct Loaded {
  std::unique_ptr<CheckpointReader> checkpoint;
  std::unique_ptr<LlamaModel> model;
};

inline absl::StatusOr<Loaded> LoadFrom(const std::string& dir, ModelLoadOptions options = {}) {
  auto config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  auto checkpoint = CheckpointReader::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  auto model = LlamaModel::Load(**checkpoint, *config, options);
  if (!model.ok()) return model.status();
  return Loaded{std::move(*checkpoint), std::move(*model)};
}

inline std::vector<int64_t> RandomTokens(int64_t vocab, int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::vector<int64_t> tokens(count);
  for (auto& t : tokens) t = pick(rng);
  return tokens;
}

// A full-precision cache for one sequence of up to max_tokens.
inline kv::StandaloneCache NewCache(const LlamaModel& model, int64_t max_tokens) {
  auto cache = kv::StandaloneCache::Create(model.kv_shape(), kv::FullPrecisionFormat(), max_tokens);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return *std::move(cache);
}

// Runs tokens through the model as one step of the cache's sequence (positions
// cache->length() ...): float32 logits of the last row [1, vocab], or of every row.
inline at::Tensor Forward(LlamaModel& model, const std::vector<int64_t>& tokens, kv::StandaloneCache& cache,
                          bool last_only = true) {
  return ForwardSequence(model, cache.manager(), *cache, std::vector<int32_t>(tokens.begin(), tokens.end()),
                         last_only);
}

}  // namespace squat
