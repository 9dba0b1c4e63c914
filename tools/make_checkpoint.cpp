// squat-make-checkpoint: writes a random-weight Hugging Face checkpoint directory of any
// Llama-family shape (config.json, safetensors, generation_config.json, tokenizer.json).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tools/checkpoint_spec.h"
#include "tools/checkpoint_tokenizer.h"
#include "tools/checkpoint_writer.h"

namespace squat::checkpoint {
namespace {

namespace fs = std::filesystem;

constexpr const char* kUsage = R"(usage: squat-make-checkpoint --out DIR [--preset NAME] [overrides...]

Writes a Hugging Face checkpoint directory with random weights: config.json, model.safetensors
(or N shards + model.safetensors.index.json), generation_config.json, tokenizer.json (byte-level
BPE) and tokenizer_config.json. The same flags and seed always give the same bytes.

  --out DIR                      output directory (created; existing weight files replaced)
  --preset NAME                  tiny (default), tiny-qwen2, llama2-7b, llama3-8b, llama31-8b
  --model-type TYPE              llama, mistral or qwen2 (qwen2 implies --attention-bias)
  --vocab-size N                 at least 258 (256 byte tokens + bos + eos)
  --hidden-size N
  --intermediate-size N
  --num-layers N
  --num-heads N
  --num-kv-heads N
  --head-dim N                   default hidden-size / num-heads
  --max-position-embeddings N
  --rope-theta X
  --rms-norm-eps X
  --rope-scaling-llama3[=BOOL]   Llama 3.1 rope scaling (factor 8, low 1, high 4, original 8192)
  --tie-word-embeddings[=BOOL]   no lm_head.weight; the embedding is reused
  --attention-bias[=BOOL]        q/k/v projection biases
  --dtype TYPE                   float32, float16 or bfloat16
  --shards N                     number of safetensors files (default 1)
  --seed N                       random seed (default 0)
  --init-std X                   standard deviation of the weights (default 0.02); norm
                                 weights are 1 + noise of this size
  --threads N                    generator threads (default: all cores)
  --help                         this text
)";

const char* const kValueFlags[] = {"out",
                                   "preset",
                                   "model-type",
                                   "vocab-size",
                                   "hidden-size",
                                   "intermediate-size",
                                   "num-layers",
                                   "num-heads",
                                   "num-kv-heads",
                                   "head-dim",
                                   "max-position-embeddings",
                                   "rope-theta",
                                   "rms-norm-eps",
                                   "dtype",
                                   "shards",
                                   "seed",
                                   "init-std",
                                   "threads"};
const char* const kBoolFlags[] = {"rope-scaling-llama3", "tie-word-embeddings", "attention-bias", "help"};

bool IsOneOf(const std::string& name, const char* const* begin, const char* const* end) {
  for (auto it = begin; it != end; ++it) {
    if (name == *it) return true;
  }
  return false;
}

// --name VALUE, --name=VALUE; boolean flags also as bare --name.
absl::StatusOr<std::map<std::string, std::string>> ParseFlags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    arg = arg.substr(2);
    std::string value;
    const size_t eq = arg.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    if (IsOneOf(arg, std::begin(kBoolFlags), std::end(kBoolFlags))) {
      flags[arg] = has_value ? value : "true";
    } else if (IsOneOf(arg, std::begin(kValueFlags), std::end(kValueFlags))) {
      if (!has_value) {
        if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", arg, " needs a value"));
        value = argv[++i];
      }
      flags[arg] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", arg, " (see --help)"));
    }
  }
  return flags;
}

absl::Status ApplyInt(const std::map<std::string, std::string>& flags, const char* name, int64_t* out) {
  auto it = flags.find(name);
  if (it == flags.end()) return absl::OkStatus();
  if (!absl::SimpleAtoi(it->second, out)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", it->second, "' is not an integer"));
  }
  return absl::OkStatus();
}

absl::Status ApplyDouble(const std::map<std::string, std::string>& flags, const char* name, double* out) {
  auto it = flags.find(name);
  if (it == flags.end()) return absl::OkStatus();
  if (!absl::SimpleAtod(it->second, out)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", it->second, "' is not a number"));
  }
  return absl::OkStatus();
}

absl::Status ApplyBool(const std::map<std::string, std::string>& flags, const char* name, bool* out) {
  auto it = flags.find(name);
  if (it == flags.end()) return absl::OkStatus();
  if (!absl::SimpleAtob(it->second, out)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", it->second, "' is not a boolean"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointSpec> BuildSpec(const std::map<std::string, std::string>& flags) {
  auto preset = flags.find("preset");
  auto spec = PresetSpec(preset == flags.end() ? "tiny" : preset->second);
  if (!spec.ok()) return spec.status();
  if (auto it = flags.find("model-type"); it != flags.end()) spec->model_type = it->second;
  if (auto it = flags.find("dtype"); it != flags.end()) spec->dtype = it->second;
  const std::pair<const char*, int64_t*> ints[] = {
      {"vocab-size", &spec->vocab_size},
      {"hidden-size", &spec->hidden_size},
      {"intermediate-size", &spec->intermediate_size},
      {"num-layers", &spec->num_layers},
      {"num-heads", &spec->num_heads},
      {"num-kv-heads", &spec->num_kv_heads},
      {"head-dim", &spec->head_dim},
      {"max-position-embeddings", &spec->max_position_embeddings},
      {"shards", &spec->shards},
  };
  for (const auto& [name, out] : ints) {
    if (auto s = ApplyInt(flags, name, out); !s.ok()) return s;
  }
  if (auto it = flags.find("seed"); it != flags.end() && !absl::SimpleAtoi(it->second, &spec->seed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed: '", it->second, "' is not a non-negative integer"));
  }
  if (auto s = ApplyDouble(flags, "rope-theta", &spec->rope_theta); !s.ok()) return s;
  if (auto s = ApplyDouble(flags, "rms-norm-eps", &spec->rms_norm_eps); !s.ok()) return s;
  if (auto s = ApplyDouble(flags, "init-std", &spec->init_std); !s.ok()) return s;
  if (auto s = ApplyBool(flags, "rope-scaling-llama3", &spec->rope_scaling_llama3); !s.ok()) return s;
  if (auto s = ApplyBool(flags, "tie-word-embeddings", &spec->tie_word_embeddings); !s.ok()) return s;
  // Qwen2 models always carry q/k/v biases; an explicit --attention-bias=false is then an error.
  if (spec->model_type == "qwen2") spec->attention_bias = true;
  if (auto s = ApplyBool(flags, "attention-bias", &spec->attention_bias); !s.ok()) return s;

  if (spec->num_heads <= 0) return absl::InvalidArgumentError("--num-heads must be positive");
  if (spec->head_dim < 0) return absl::InvalidArgumentError("--head-dim must be positive");
  if (!(spec->init_std >= 0) || spec->init_std > 1e6) {
    return absl::InvalidArgumentError("--init-std must be a non-negative number");
  }
  if (auto dtype = SpecDType(*spec); !dtype.ok()) return dtype.status();
  return spec;
}

absl::Status WriteTextFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text << '\n';
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("error writing ", path.string()));
  return absl::OkStatus();
}

// Weight files of an earlier run with another shard count would confuse loaders.
void RemoveStaleWeights(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool shard = name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
                       entry.path().extension() == ".safetensors";
    if (shard || name == "model.safetensors" || name == "model.safetensors.index.json") {
      fs::remove(entry.path(), ec);
    }
  }
}

absl::Status Run(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv);
  if (!flags.ok()) return flags.status();
  if (flags->count("help")) {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  auto out_flag = flags->find("out");
  if (out_flag == flags->end() || out_flag->second.empty()) {
    return absl::InvalidArgumentError("--out DIR is required (see --help)");
  }
  auto spec = BuildSpec(*flags);
  if (!spec.ok()) return spec.status();
  const DType dtype = *SpecDType(*spec);

  auto tokenizer = BuildByteLevelTokenizer(spec->vocab_size, spec->max_position_embeddings);
  if (!tokenizer.ok()) return tokenizer.status();
  auto config = ConfigJson(*spec, tokenizer->bos_id, tokenizer->eos_id);
  if (!config.ok()) return config.status();

  const std::vector<TensorSpec> tensors = ListTensors(*spec);
  auto shards = PlanShards(tensors, spec->shards, DTypeSize(dtype));
  if (!shards.ok()) return shards.status();

  int64_t threads = std::max(1u, std::thread::hardware_concurrency());
  if (auto s = ApplyInt(*flags, "threads", &threads); !s.ok()) return s;
  if (threads < 1 || threads > 1024) return absl::InvalidArgumentError("--threads must be in [1, 1024]");

  const fs::path dir = out_flag->second;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  RemoveStaleWeights(dir);

  uint64_t total_bytes = 0;
  uint64_t total_params = 0;
  for (const TensorSpec& tensor : tensors) {
    total_params += tensor.numel();
    total_bytes += tensor.numel() * DTypeSize(dtype);
  }
  const bool large = total_bytes >= (uint64_t{256} << 20);
  std::fprintf(stderr,
               "squat-make-checkpoint: %s, %llu parameters (%s), %zu tensors, %zu file(s), %lld threads\n",
               spec->model_type.c_str(), static_cast<unsigned long long>(total_params), spec->dtype.c_str(),
               tensors.size(), shards->size(), static_cast<long long>(threads));

  Progress progress(total_bytes, large);
  const WeightOptions options{spec->seed, spec->init_std, dtype, static_cast<int>(threads)};
  for (const ShardFile& shard : *shards) {
    if (auto s = WriteShard((dir / shard.file_name).string(), shard, options, &progress); !s.ok()) return s;
  }
  if (shards->size() > 1) {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (const ShardFile& shard : *shards) {
      for (const TensorSpec* tensor : shard.tensors) weight_map[tensor->name] = shard.file_name;
    }
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    if (auto s = WriteTextFile(dir / "model.safetensors.index.json", index.dump(2)); !s.ok()) return s;
  }
  if (auto s = WriteTextFile(dir / "config.json", *config); !s.ok()) return s;
  if (auto s = WriteTextFile(dir / "generation_config.json",
                             GenerationConfigJson(tokenizer->bos_id, tokenizer->eos_id));
      !s.ok()) {
    return s;
  }
  if (auto s = WriteTextFile(dir / "tokenizer.json", tokenizer->tokenizer_json); !s.ok()) return s;
  if (auto s = WriteTextFile(dir / "tokenizer_config.json", tokenizer->tokenizer_config_json); !s.ok())
    return s;
  std::fprintf(stderr, "squat-make-checkpoint: wrote %s (%lld merges, bos %d, eos %d)\n",
               dir.string().c_str(), static_cast<long long>(tokenizer->num_merges), tokenizer->bos_id,
               tokenizer->eos_id);
  return absl::OkStatus();
}

}  // namespace
}  // namespace squat::checkpoint

int main(int argc, char** argv) {
  absl::Status status = squat::checkpoint::Run(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "squat-make-checkpoint: %s\n", std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
