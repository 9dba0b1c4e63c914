// Broken model directories given to the real squat-server binary: each must end the process
// with exit status 1 and a message that names the problem, never a signal (abort, segfault)
// and never a server that starts anyway. Every case starts from a fresh copy of the tiny
// checkpoint and damages it at a place drawn at random.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/checkpoint/safetensors.h"
#include "tests/process_test_support.h"

namespace {

namespace fs = std::filesystem;
using namespace squat::testing_support;
using nlohmann::json;

constexpr std::chrono::seconds kExitTimeout(90);

struct ServerExit {
  std::optional<int> exit_code;  // nullopt: still running at the timeout (then killed)
  std::string log;
};

// Runs squat-server on the model directory until it exits.
ServerExit RunServer(const std::string& model_dir, const std::vector<std::string>& extra_args) {
  const std::string log_path = UniqueTempPath("squat_badckpt", "log");
  std::vector<std::string> args = {SQUAT_SERVER_BIN, "--model", model_dir, "--address",
                                   absl::StrCat("127.0.0.1:", FreeLoopbackPort()), "--device", "cpu",
                                   "--kv-pool-mib", "16"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  ServerExit result;
  const auto give_up = std::chrono::steady_clock::now() + kExitTimeout;
  while (std::chrono::steady_clock::now() < give_up) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      result.exit_code = ExitCodeOf(status);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!result.exit_code.has_value()) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  result.log = ReadFile(log_path);
  std::remove(log_path.c_str());
  return result;
}

int64_t RandomIn(int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(Rng());
}

uint64_t HeaderLength(const std::string& safetensors_bytes) {
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(safetensors_bytes[i]);
  return length;
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

class BadCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = UniqueTempPath("squat_badckpt", "model");
    fs::copy(SQUAT_TINY_MODEL_DIR, dir_, fs::copy_options::recursive);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path File(const std::string& name) const { return fs::path(dir_) / name; }
  std::string Weights() const { return ReadFile(File("model.safetensors")); }

  // Exit status 1 and a log that contains every part (one line may hold several).
  void ExpectCleanFailure(const std::vector<std::string>& parts, const std::vector<std::string>& extra = {}) {
    const ServerExit exit = RunServer(dir_, extra);
    ASSERT_TRUE(exit.exit_code.has_value()) << "the server started anyway; log:\n" << exit.log;
    EXPECT_EQ(*exit.exit_code, 1) << "(128 + n means signal n) log:\n" << exit.log;
    for (const std::string& part : parts) {
      EXPECT_TRUE(absl::StrContains(exit.log, part)) << "missing '" << part << "' in:\n" << exit.log;
    }
    EXPECT_FALSE(absl::StrContains(exit.log, "loaded in")) << exit.log;  // the "serving ..." line
  }

  // Rewrites model.safetensors through `edit`, which may change the tensor list.
  template <typename Edit>
  void RewriteWeights(Edit edit) {
    auto file = squat::SafetensorsFile::Open(File("model.safetensors").string());
    ASSERT_TRUE(file.ok()) << file.status();
    std::vector<squat::NamedTensor> tensors;
    for (const std::string& name : (*file)->Names()) tensors.push_back({name, *(*file)->Find(name)});
    edit(tensors);
    const fs::path rewritten = File("rewritten.safetensors");
    ASSERT_TRUE(squat::WriteSafetensors(rewritten.string(), tensors).ok());
    file->reset();
    fs::rename(rewritten, File("model.safetensors"));
  }

  json Config() const { return json::parse(ReadFile(File("config.json").string())); }

  Watchdog watchdog_{"server_bad_checkpoint_test", std::chrono::seconds(170)};
  std::string dir_;
};

// The layer weights of the tiny model (2-D projections), from its own file.
std::vector<std::string> ProjectionNames(const std::vector<squat::NamedTensor>& tensors) {
  std::vector<std::string> names;
  for (const auto& t : tensors) {
    if (t.view.shape.size() == 2 && t.view.shape[0] != t.view.shape[1] &&
        absl::StrContains(t.name, "layers.")) {
      names.push_back(t.name);
    }
  }
  return names;
}

TEST_F(BadCheckpointTest, WeightsTruncatedInTheTensorData) {
  const std::string bytes = Weights();
  const int64_t data_begin = 8 + static_cast<int64_t>(HeaderLength(bytes));
  const int64_t cut = RandomIn(data_begin, static_cast<int64_t>(bytes.size()) - 1);
  SCOPED_TRACE(absl::StrCat("cut at ", cut, " of ", bytes.size()));
  fs::resize_file(File("model.safetensors"), cut);
  ExpectCleanFailure({"model.safetensors", "file truncated?"});
}

TEST_F(BadCheckpointTest, WeightsTruncatedInsideTheHeader) {
  const std::string bytes = Weights();
  const int64_t cut = RandomIn(8, 8 + static_cast<int64_t>(HeaderLength(bytes)) - 1);
  SCOPED_TRACE(absl::StrCat("cut at ", cut));
  fs::resize_file(File("model.safetensors"), cut);
  ExpectCleanFailure({"model.safetensors", absl::StrCat("exceeds the file size ", cut), "truncated"});
}

TEST_F(BadCheckpointTest, WeightsShorterThanTheLengthField) {
  const int64_t cut = RandomIn(0, 7);
  fs::resize_file(File("model.safetensors"), cut);
  ExpectCleanFailure({"model.safetensors", absl::StrCat("only ", cut, " bytes")});
}

TEST_F(BadCheckpointTest, HeaderIsNotJson) {
  std::string bytes = Weights();
  const uint64_t header = HeaderLength(bytes);
  // A '#' at the start and random bytes after it: no JSON parser accepts that.
  bytes[8] = '#';
  for (uint64_t i = 9; i < 8 + header; ++i) {
    if (RandomIn(0, 3) == 0) bytes[i] = static_cast<char>(RandomIn(0, 255));
  }
  WriteText(File("model.safetensors"), bytes);
  ExpectCleanFailure({"model.safetensors", "header is not valid JSON"});
}

TEST_F(BadCheckpointTest, HeaderLengthIsImplausible) {
  std::string bytes = Weights();
  const uint64_t length = (uint64_t{1} << 40) + static_cast<uint64_t>(RandomIn(0, 1 << 20));
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  WriteText(File("model.safetensors"), bytes);
  ExpectCleanFailure({"model.safetensors", absl::StrCat("header length ", length, " is implausible")});
}

TEST_F(BadCheckpointTest, WeightWithAnIntegerDtype) {
  std::string victim;
  RewriteWeights([&](std::vector<squat::NamedTensor>& tensors) {
    auto& t = tensors[RandomIn(0, static_cast<int64_t>(tensors.size()) - 1)];
    t.view.dtype = squat::DType::kI32;  // same 4-byte elements: only the label is wrong
    victim = t.name;
  });
  ExpectCleanFailure({"unsupported weight dtype I32", victim});
}

TEST_F(BadCheckpointTest, WeightWithTheWrongShape) {
  std::string victim;
  RewriteWeights([&](std::vector<squat::NamedTensor>& tensors) {
    const std::vector<std::string> names = ProjectionNames(tensors);
    ASSERT_FALSE(names.empty());
    victim = names[RandomIn(0, static_cast<int64_t>(names.size()) - 1)];
    for (auto& t : tensors) {
      if (t.name == victim) std::swap(t.view.shape[0], t.view.shape[1]);  // same bytes, transposed
    }
  });
  ExpectCleanFailure({absl::StrCat("tensor '", victim, "' has shape")});
}

TEST_F(BadCheckpointTest, MissingTensor) {
  std::string victim;
  RewriteWeights([&](std::vector<squat::NamedTensor>& tensors) {
    const size_t index = RandomIn(0, static_cast<int64_t>(tensors.size()) - 1);
    victim = tensors[index].name;
    tensors.erase(tensors.begin() + index);
  });
  ExpectCleanFailure({absl::StrCat("missing tensor '", victim, "'")});
}

TEST_F(BadCheckpointTest, ShardIndexNamesAMissingFile) {
  fs::remove(File("model.safetensors"));
  const std::string shard = absl::StrCat("model-", RandomIn(1, 99), "-of-00002.safetensors");
  WriteText(File("model.safetensors.index.json"),
            json{{"weight_map", {{"model.embed_tokens.weight", shard}}}}.dump());
  ExpectCleanFailure({"cannot open", shard});
}

TEST_F(BadCheckpointTest, NoWeightsAtAll) {
  fs::remove(File("model.safetensors"));
  ExpectCleanFailure({"no model.safetensors or model.safetensors.index.json"});
}

TEST_F(BadCheckpointTest, TokenizerOfTheUnigramKind) {
  json tokenizer = json::parse(ReadFile(File("tokenizer.json").string()));
  tokenizer["model"] = {{"type", "Unigram"}, {"unk_id", 0},
                        {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"a", -RandomIn(1, 9)})})}};
  WriteText(File("tokenizer.json"), tokenizer.dump());
  ExpectCleanFailure({"tokenizer.json", "unsupported model type 'Unigram'"});
}

TEST_F(BadCheckpointTest, TokenizerOfTheWordPieceKind) {
  json tokenizer = json::parse(ReadFile(File("tokenizer.json").string()));
  tokenizer["model"] = {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
                        {"max_input_chars_per_word", 100}, {"vocab", {{"[UNK]", 0}, {"a", 1}}}};
  WriteText(File("tokenizer.json"), tokenizer.dump());
  ExpectCleanFailure({"tokenizer.json", "unsupported model type 'WordPiece'"});
}

TEST_F(BadCheckpointTest, TokenizerIsNotJson) {
  std::string text = ReadFile(File("tokenizer.json").string());
  text.resize(RandomIn(1, static_cast<int64_t>(text.size()) / 2));  // cut mid-document
  WriteText(File("tokenizer.json"), text);
  ExpectCleanFailure({"tokenizer.json"});
}

TEST_F(BadCheckpointTest, ConfigIsGarbage) {
  std::string garbage = "\x01";
  for (int i = 0; i < 64; ++i) garbage.push_back(static_cast<char>(RandomIn(0, 255)));
  WriteText(File("config.json"), garbage);
  ExpectCleanFailure({"config.json", "not valid JSON"});
}

TEST_F(BadCheckpointTest, ConfigMissesARequiredField) {
  const char* const kRequired[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads"};
  const std::string field = kRequired[RandomIn(0, 4)];
  json config = Config();
  config.erase(field);
  WriteText(File("config.json"), config.dump());
  ExpectCleanFailure({"config.json", absl::StrCat("field '", field, "' is missing")});
}

TEST_F(BadCheckpointTest, ConfigVocabDisagreesWithTheWeights) {
  json config = Config();
  const int64_t vocab = config["vocab_size"].get<int64_t>() + RandomIn(1, 1000);
  config["vocab_size"] = vocab;
  WriteText(File("config.json"), config.dump());
  ExpectCleanFailure({"model.embed_tokens.weight", "has shape", absl::StrCat("expected [", vocab)});
}

// Before the memory check this config made the loader throw std::bad_alloc (an abort).
TEST_F(BadCheckpointTest, ConfigWithAbsurdLayerCountIsTooLargeForMemory) {
  json config = Config();
  config["num_hidden_layers"] = RandomIn(int64_t{1} << 30, int64_t{1} << 31);
  WriteText(File("config.json"), config.dump());
  ExpectCleanFailure({"model too large for memory", "available host memory"});
}

// The tiny model loads in float32 on CPU: its weights take exactly the safetensors data bytes.
TEST_F(BadCheckpointTest, ModelAboveTheMemoryBudget) {
  const std::string bytes = Weights();
  const int64_t weight_bytes = static_cast<int64_t>(bytes.size()) - 8 - static_cast<int64_t>(HeaderLength(bytes));
  const int64_t pool_mib = RandomIn(1, 8);
  const std::string weights_mib = absl::StrFormat("%.1f MiB", weight_bytes / 1048576.0);
  ExpectCleanFailure({"model too large for memory", absl::StrCat("weights ", weights_mib, " (float32)"),
                      absl::StrCat("KV pool ", pool_mib, ".0 MiB"), "--max-memory-mib budget of 1.0 MiB"},
                     {"--kv-pool-mib", std::to_string(pool_mib), "--max-memory-mib", "1"});
}

TEST_F(BadCheckpointTest, KvPoolAboveTheAvailableMemory) {
  // Several times the machine's memory (MemTotal read here, not by the server).
  int64_t total_kib = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  meminfo >> key >> total_kib;
  ASSERT_EQ(key, "MemTotal:");
  const int64_t pool_mib = total_kib / 1024 * RandomIn(2, 8);
  ExpectCleanFailure({"model too large for memory", absl::StrCat("KV pool ", pool_mib, ".0 MiB"),
                      "available host memory"},
                     {"--kv-pool-mib", std::to_string(pool_mib)});
}

TEST_F(BadCheckpointTest, ModelDirectoryDoesNotExist) {
  fs::remove_all(dir_);
  ExpectCleanFailure({"does not exist"});
}

}  // namespace
