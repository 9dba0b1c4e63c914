// Tests of squat-make-checkpoint: the tiny_model fixture, reruns of the binary, and its
// float16/bfloat16 conversion against an independent nearest-value search.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tools/checkpoint_numeric.h"

namespace squat {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

const std::string kGenerator = SQUAT_BINARY_DIR "/tools/squat-make-checkpoint";
const std::string kFixture = SQUAT_TINY_MODEL_DIR;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "checkpoint_generator_test_XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Sub(const std::string& name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code;
  std::string output;
};

RunResult RunGenerator(const std::string& args, const TempDir& scratch) {
  const std::string log = scratch.Sub("generator.log");
  const int status = std::system((kGenerator + " " + args + " > " + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::ostringstream text;
  text << in.rdbuf();
  return RunResult{WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<float> AsFloats(const TensorView& view) {
  std::vector<float> values(view.numel());
  std::memcpy(values.data(), view.data, view.nbytes);
  return values;
}

// ---- the fixture: --preset tiny --seed 7 ----

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// HF LlamaForCausalLM names and [out, in] shapes for the tiny preset, written out by hand.
std::vector<ExpectedTensor> TinyLlamaTensors(bool attention_bias, bool tied) {
  std::vector<ExpectedTensor> tensors = {{"model.embed_tokens.weight", {512, 256}},
                                         {"model.norm.weight", {256}}};
  if (!tied) tensors.push_back({"lm_head.weight", {512, 256}});
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    tensors.push_back({p + "input_layernorm.weight", {256}});
    tensors.push_back({p + "post_attention_layernorm.weight", {256}});
    tensors.push_back({p + "self_attn.q_proj.weight", {256, 256}});  // 4 heads x 64
    tensors.push_back({p + "self_attn.k_proj.weight", {128, 256}});  // 2 kv heads x 64
    tensors.push_back({p + "self_attn.v_proj.weight", {128, 256}});
    tensors.push_back({p + "self_attn.o_proj.weight", {256, 256}});
    tensors.push_back({p + "mlp.gate_proj.weight", {688, 256}});
    tensors.push_back({p + "mlp.up_proj.weight", {688, 256}});
    tensors.push_back({p + "mlp.down_proj.weight", {256, 688}});
    if (attention_bias) {
      tensors.push_back({p + "self_attn.q_proj.bias", {256}});
      tensors.push_back({p + "self_attn.k_proj.bias", {128}});
      tensors.push_back({p + "self_attn.v_proj.bias", {128}});
    }
  }
  return tensors;
}

void ExpectExactTensorSet(const CheckpointReader& reader, const std::vector<ExpectedTensor>& expected,
                          DType dtype) {
  std::set<std::string> expected_names;
  for (const ExpectedTensor& t : expected) {
    expected_names.insert(t.name);
    const TensorView* view = reader.Find(t.name);
    ASSERT_NE(view, nullptr) << t.name;
    EXPECT_EQ(view->shape, t.shape) << t.name;
    EXPECT_EQ(view->dtype, dtype) << t.name;
  }
  const std::vector<std::string> names = reader.Names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected_names);
}

TEST(CheckpointGeneratorTest, FixtureHasEveryTensor) {
  auto reader = CheckpointReader::Open(kFixture);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ExpectExactTensorSet(**reader, TinyLlamaTensors(/*attention_bias=*/false, /*tied=*/false), DType::kF32);
}

TEST(CheckpointGeneratorTest, FixtureConfigParses) {
  auto config = LoadModelConfig(kFixture + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->vocab_size, 512);
  EXPECT_EQ(config->hidden_size, 256);
  EXPECT_EQ(config->intermediate_size, 688);
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->num_attention_heads, 4);
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "float32");
  ASSERT_TRUE(config->bos_token_id.has_value());
  ASSERT_EQ(config->eos_token_ids.size(), 1u);

  const json raw = json::parse(ReadAll(kFixture + "/config.json"));
  EXPECT_EQ(raw["architectures"], json::array({"LlamaForCausalLM"}));
  const json generation = json::parse(ReadAll(kFixture + "/generation_config.json"));
  EXPECT_EQ(generation["bos_token_id"], *config->bos_token_id);
  EXPECT_EQ(generation["eos_token_id"], config->eos_token_ids[0]);
}

struct Moments {
  double mean = 0;
  double std = 0;
  double within_one_std = 0;  // fraction of |x - mean| < std
};

Moments ComputeMoments(const std::vector<float>& values) {
  Moments m;
  for (float v : values) m.mean += v;
  m.mean /= values.size();
  for (float v : values) m.std += (v - m.mean) * (v - m.mean);
  m.std = std::sqrt(m.std / values.size());
  for (float v : values) m.within_one_std += std::abs(v - m.mean) < m.std;
  m.within_one_std /= values.size();
  return m;
}

TEST(CheckpointGeneratorTest, FixtureWeightsAreNormalWithInitStd) {
  auto reader = CheckpointReader::Open(kFixture);
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (const std::string& name : (*reader)->Names()) {
    const std::vector<float> values = AsFloats(*(*reader)->Find(name));
    const Moments m = ComputeMoments(values);
    if (name.find("norm") != std::string::npos) {
      // 1 + N(0, 0.02^2): near one, but not all ones.
      EXPECT_NEAR(m.mean, 1.0, 0.01) << name;
      EXPECT_GT(m.std, 0.014) << name;
      EXPECT_LT(m.std, 0.026) << name;
    } else {
      EXPECT_NEAR(m.mean, 0.0, 0.001) << name;
      EXPECT_NEAR(m.std, 0.02, 0.0005) << name;
      // A normal distribution puts 68.3% within one standard deviation (a uniform one 57.7%).
      EXPECT_NEAR(m.within_one_std, 0.6827, 0.01) << name;
    }
  }
  // Tensors of the same shape must not repeat each other's values.
  const std::vector<float> q0 = AsFloats(*(*reader)->Find("model.layers.0.self_attn.q_proj.weight"));
  const std::vector<float> q1 = AsFloats(*(*reader)->Find("model.layers.1.self_attn.q_proj.weight"));
  const std::vector<float> o0 = AsFloats(*(*reader)->Find("model.layers.0.self_attn.o_proj.weight"));
  double dot01 = 0, dot0o = 0, norm = 0;
  for (size_t i = 0; i < q0.size(); ++i) {
    dot01 += double(q0[i]) * q1[i];
    dot0o += double(q0[i]) * o0[i];
    norm += double(q0[i]) * q0[i];
  }
  EXPECT_LT(std::abs(dot01 / norm), 0.02);
  EXPECT_LT(std::abs(dot0o / norm), 0.02);
}

// GPT-2's byte alphabet, built the way the original encoder builds it: printable bytes keep
// their code point, the rest are appended after 255 in byte order.
std::vector<std::string> Gpt2ByteAlphabet() {
  std::vector<int> bytes;
  for (int b = '!'; b <= '~'; ++b) bytes.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bytes.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bytes.push_back(b);
  std::vector<int> code_points = bytes;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bytes.begin(), bytes.end(), b) == bytes.end()) {
      bytes.push_back(b);
      code_points.push_back(256 + extra++);
    }
  }
  std::vector<std::string> alphabet(256);
  for (size_t i = 0; i < bytes.size(); ++i) {
    const int cp = code_points[i];
    std::string utf8;
    if (cp < 0x80) {
      utf8 = std::string(1, static_cast<char>(cp));
    } else {
      utf8 = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    }
    alphabet[bytes[i]] = utf8;
  }
  return alphabet;
}

TEST(CheckpointGeneratorTest, FixtureTokenizerJsonStructure) {
  json tokenizer;
  ASSERT_NO_THROW(tokenizer = json::parse(ReadAll(kFixture + "/tokenizer.json")));
  auto config = LoadModelConfig(kFixture + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const int32_t bos = *config->bos_token_id;
  const int32_t eos = config->eos_token_ids[0];

  const json& model = tokenizer["model"];
  EXPECT_EQ(model["type"], "BPE");
  EXPECT_EQ(model["byte_fallback"], false);
  const json& vocab = model["vocab"];
  const std::vector<std::string> alphabet = Gpt2ByteAlphabet();
  for (int b = 0; b < 256; ++b) {
    ASSERT_TRUE(vocab.contains(alphabet[b])) << "byte " << b;
    EXPECT_EQ(vocab[alphabet[b]], b) << "byte " << b;
  }
  // Every id from 0 to vocab_size - 1 exactly once, across the BPE vocab and the added tokens.
  std::vector<int> seen(config->vocab_size, 0);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int id = it.value();
    ASSERT_GE(id, 0);
    ASSERT_LT(id, config->vocab_size);
    ++seen[id];
  }
  std::map<std::string, int> added;
  for (const json& token : tokenizer["added_tokens"]) {
    const int id = token["id"];
    ASSERT_GE(id, 0);
    ASSERT_LT(id, config->vocab_size);
    ++seen[id];
    added[token["content"]] = id;
    EXPECT_EQ(token["special"], true);
    EXPECT_FALSE(vocab.contains(token["content"].get<std::string>()));
  }
  for (int id = 0; id < config->vocab_size; ++id) EXPECT_EQ(seen[id], 1) << "id " << id;
  EXPECT_EQ(added.at("<|begin_of_text|>"), bos);
  EXPECT_EQ(added.at("<|end_of_text|>"), eos);
  for (const auto& [content, id] : added) {
    if (id != bos && id != eos) {
      EXPECT_EQ(content.rfind("<|reserved_", 0), 0u) << content;
    }
  }

  // Merges: "left right", both sides known before the merge, the concatenation in the vocab;
  // every learned token comes from a merge.
  const json& merges = model["merges"];
  ASSERT_GT(merges.size(), 100u) << "the BPE trainer learned too few merges";
  std::set<std::string> produced;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string merge = merges[i];
    const size_t space = merge.find(' ');
    ASSERT_NE(space, std::string::npos) << merge;
    ASSERT_EQ(merge.find(' ', space + 1), std::string::npos) << merge;
    const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    ASSERT_TRUE(vocab.contains(left)) << merge;
    ASSERT_TRUE(vocab.contains(right)) << merge;
    ASSERT_TRUE(vocab.contains(left + right)) << merge;
    EXPECT_LT(vocab[left].get<int>(), 256 + static_cast<int>(i)) << "merge uses a later token: " << merge;
    EXPECT_LT(vocab[right].get<int>(), 256 + static_cast<int>(i)) << "merge uses a later token: " << merge;
    produced.insert(left + right);
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (it.value().get<int>() >= 256) {
      EXPECT_TRUE(produced.count(it.key())) << it.key();
    }
  }
  EXPECT_EQ(bos, static_cast<int>(vocab.size()));
  EXPECT_EQ(eos, bos + 1);

  EXPECT_EQ(tokenizer["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(tokenizer["pre_tokenizer"]["use_regex"], true);
  EXPECT_EQ(tokenizer["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(tokenizer["decoder"]["type"], "ByteLevel");
  EXPECT_TRUE(tokenizer["normalizer"].is_null());
  const json& post = tokenizer["post_processor"];
  EXPECT_EQ(post["type"], "TemplateProcessing");
  ASSERT_EQ(post["single"].size(), 2u);
  EXPECT_EQ(post["single"][0]["SpecialToken"]["id"], "<|begin_of_text|>");
  EXPECT_EQ(post["single"][1]["Sequence"]["id"], "A");
  EXPECT_EQ(post["special_tokens"]["<|begin_of_text|>"]["ids"], json::array({bos}));
}

// The runtime tokenizer must accept the generated file; its exact merges are checked above.
TEST(CheckpointGeneratorTest, FixtureTokenizerLoadsAndRoundTrips) {
  auto tokenizer = Tokenizer::FromFile(kFixture + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto config = LoadModelConfig(kFixture + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), config->vocab_size);
  EXPECT_TRUE((*tokenizer)->IsSpecial(*config->bos_token_id));
  EXPECT_EQ((*tokenizer)->TokenToId("<|end_of_text|>"), config->eos_token_ids[0]);

  std::random_device device;
  std::mt19937 rng(device());
  const std::string words[] = {
      "the",  "lighthouse",        "keeper",           "bread", "zebra", "Quartz", "1871",
      "it's", "\xc3\xa9t\xc3\xa9", "\xf0\x9f\x99\x82", "!?",    "  ",    "\n"};
  for (int trial = 0; trial < 20; ++trial) {
    std::string text;
    const int count = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < count; ++i) text += (i ? " " : "") + words[rng() % std::size(words)];
    const std::vector<int32_t> plain = (*tokenizer)->Encode(text, /*add_special_tokens=*/false);
    EXPECT_LT(plain.size(), text.size() + 1) << text;
    EXPECT_EQ((*tokenizer)->Decode(plain), text);
    const std::vector<int32_t> with_bos = (*tokenizer)->Encode(text, /*add_special_tokens=*/true);
    ASSERT_EQ(with_bos.size(), plain.size() + 1) << text;
    EXPECT_EQ(with_bos[0], *config->bos_token_id);
  }
  // Learned merges make common training words shorter than their bytes.
  EXPECT_LT((*tokenizer)->Encode(" lighthouse keeper", false).size(), 5u);
}

// ---- reruns of the binary ----

std::vector<std::string> DirectoryFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void ExpectIdenticalDirectories(const std::string& a, const std::string& b) {
  const std::vector<std::string> files = DirectoryFiles(a);
  ASSERT_EQ(files, DirectoryFiles(b));
  for (const std::string& name : files) {
    EXPECT_TRUE(ReadAll(a + "/" + name) == ReadAll(b + "/" + name)) << name << " differs";
  }
}

TEST(CheckpointGeneratorTest, SameSeedSameBytes) {
  TempDir scratch;
  for (const char* run : {"a", "b"}) {
    RunResult result = RunGenerator("--preset tiny --seed 1234 --out " + scratch.Sub(run), scratch);
    ASSERT_EQ(result.exit_code, 0) << result.output;
  }
  ExpectIdenticalDirectories(scratch.Sub("a"), scratch.Sub("b"));

  RunResult other = RunGenerator("--preset tiny --seed 1235 --out " + scratch.Sub("c"), scratch);
  ASSERT_EQ(other.exit_code, 0) << other.output;
  EXPECT_TRUE(ReadAll(scratch.Sub("a") + "/model.safetensors") !=
              ReadAll(scratch.Sub("c") + "/model.safetensors"));
  EXPECT_EQ(ReadAll(scratch.Sub("a") + "/tokenizer.json"), ReadAll(scratch.Sub("c") + "/tokenizer.json"));
}

TEST(CheckpointGeneratorTest, ThreadCountDoesNotChangeBytes) {
  TempDir scratch;
  // Large enough that tensors span several work chunks.
  const std::string shape =
      "--preset tiny --vocab-size 4500 --intermediate-size 4200 --seed 3 --dtype bfloat16";
  for (const char* threads : {"1", "4"}) {
    RunResult result =
        RunGenerator(shape + " --threads " + threads + " --out " + scratch.Sub(threads), scratch);
    ASSERT_EQ(result.exit_code, 0) << result.output;
  }
  ExpectIdenticalDirectories(scratch.Sub("1"), scratch.Sub("4"));
}

TEST(CheckpointGeneratorTest, ShardedRunLoadsWithSameValues) {
  TempDir scratch;
  const std::string out = scratch.Sub("sharded");
  RunResult result = RunGenerator("--preset tiny --seed 7 --shards 3 --out " + out, scratch);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));

  const json index = json::parse(ReadAll(out + "/model.safetensors.index.json"));
  std::set<std::string> shard_files;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) shard_files.insert(*it);
  EXPECT_EQ(shard_files,
            (std::set<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                   "model-00003-of-00003.safetensors"}));

  auto sharded = CheckpointReader::Open(out);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  auto single = CheckpointReader::Open(kFixture);
  ASSERT_TRUE(single.ok()) << single.status();
  ExpectExactTensorSet(**sharded, TinyLlamaTensors(false, false), DType::kF32);
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), (*sharded)->total_bytes());
  // Same seed: sharding must not change a single value.
  for (const std::string& name : (*single)->Names()) {
    const TensorView* a = (*single)->Find(name);
    const TensorView* b = (*sharded)->Find(name);
    ASSERT_NE(b, nullptr) << name;
    ASSERT_EQ(a->nbytes, b->nbytes);
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0) << name;
  }

  // A later single-file run into the same directory replaces the shards.
  RunResult again = RunGenerator("--preset tiny --seed 7 --out " + out, scratch);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out + "/model-00001-of-00003.safetensors"));
}

TEST(CheckpointGeneratorTest, AsManyShardsAsTensors) {
  TempDir scratch;
  const std::string out = scratch.Sub("many");
  const size_t num_tensors = TinyLlamaTensors(false, false).size();
  RunResult result = RunGenerator(
      "--preset tiny --seed 9 --shards " + std::to_string(num_tensors) + " --out " + out, scratch);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  size_t shard_files = 0;
  for (const std::string& name : DirectoryFiles(out)) {
    if (name.rfind("model-", 0) != 0) continue;
    ++shard_files;
    auto shard = SafetensorsFile::Open(out + "/" + name);
    ASSERT_TRUE(shard.ok()) << shard.status();
    EXPECT_EQ((*shard)->Names().size(), 1u) << name;
  }
  EXPECT_EQ(shard_files, num_tensors);
  auto reader = CheckpointReader::Open(out);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ExpectExactTensorSet(**reader, TinyLlamaTensors(false, false), DType::kF32);
}

TEST(CheckpointGeneratorTest, Qwen2PresetHasBiasesAndTiedEmbeddings) {
  TempDir scratch;
  RunResult result = RunGenerator("--preset tiny-qwen2 --seed 5 --out " + scratch.Sub("q"), scratch);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto config = LoadModelConfig(scratch.Sub("q") + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "qwen2");
  EXPECT_TRUE(config->attention_bias);
  EXPECT_TRUE(config->tie_word_embeddings);
  const json raw = json::parse(ReadAll(scratch.Sub("q") + "/config.json"));
  EXPECT_EQ(raw["architectures"], json::array({"Qwen2ForCausalLM"}));
  auto reader = CheckpointReader::Open(scratch.Sub("q"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ExpectExactTensorSet(**reader, TinyLlamaTensors(/*attention_bias=*/true, /*tied=*/true), DType::kF32);
  const Moments bias = ComputeMoments(AsFloats(*(*reader)->Find("model.layers.1.self_attn.k_proj.bias")));
  EXPECT_GT(bias.std, 0.01);
}

TEST(CheckpointGeneratorTest, OverridesReachConfig) {
  TempDir scratch;
  RunResult result = RunGenerator(
      "--preset tiny --hidden-size 192 --num-heads 6 --num-kv-heads 3 --num-layers 3 --vocab-size 300 "
      "--intermediate-size 100 --max-position-embeddings 4096 --rope-theta 250000 --rope-scaling-llama3 "
      "--tie-word-embeddings --attention-bias --dtype float16 --init-std 0.05 --out " +
          scratch.Sub("o"),
      scratch);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto config = LoadModelConfig(scratch.Sub("o") + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 192);
  EXPECT_EQ(config->num_attention_heads, 6);
  EXPECT_EQ(config->num_key_value_heads, 3);
  EXPECT_EQ(config->head_dim, 32);
  EXPECT_EQ(config->num_hidden_layers, 3);
  EXPECT_EQ(config->vocab_size, 300);
  EXPECT_EQ(config->intermediate_size, 100);
  EXPECT_EQ(config->max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(config->rope_theta, 250000.0);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(config->rope_scaling->factor, 8.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "float16");

  auto reader = CheckpointReader::Open(scratch.Sub("o"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->Find("lm_head.weight"), nullptr);
  const TensorView* k = (*reader)->Find("model.layers.2.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{96, 192}));
  EXPECT_EQ(k->dtype, DType::kF16);
  const json tokenizer = json::parse(ReadAll(scratch.Sub("o") + "/tokenizer.json"));
  EXPECT_EQ(tokenizer["model"]["vocab"].size() + tokenizer["added_tokens"].size(), 300u);
}

TEST(CheckpointGeneratorTest, RejectsBadFlags) {
  TempDir scratch;
  const std::string out = " --out " + scratch.Sub("bad");
  struct Case {
    std::string args;
    std::string message;
  };
  const Case cases[] = {
      {"--preset tiny", "--out"},
      {"--preset huge" + out, "preset"},
      {"--num-kv-heads 3" + out, "num_key_value_heads"},
      {"--shards 0" + out, "shards"},
      {"--shards 500" + out, "shards"},
      {"--dtype int8" + out, "dtype"},
      {"--vocab-size 100" + out, "vocab"},
      {"--hidden-size lots" + out, "hidden-size"},
      {"--frobnicate 1" + out, "frobnicate"},
      {"--preset tiny-qwen2 --attention-bias=false" + out, "bias"},
  };
  for (const Case& c : cases) {
    RunResult result = RunGenerator(c.args, scratch);
    EXPECT_NE(result.exit_code, 0) << c.args;
    EXPECT_THAT(result.output, HasSubstr(c.message)) << c.args;
  }
  RunResult help = RunGenerator("--help", scratch);
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--preset"));
  EXPECT_THAT(help.output, HasSubstr("--shards"));
}

// ---- float16 / bfloat16 conversion ----

double HalfValue(uint16_t h) {  // exact decoding of IEEE binary16
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return (h & 0x8000) ? -magnitude : magnitude;
}

double BFloat16Value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

// Nearest representable value by binary search over the (monotonic) positive bit patterns,
// ties to the even pattern, overflow to infinity at the midpoint past the largest finite value.
uint16_t NearestPattern(float value, double (*decode)(uint16_t), uint16_t max_finite) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double target = std::abs(static_cast<double>(value));
  const uint16_t inf = max_finite + 1;
  if (std::isnan(value)) return sign | inf | 1;
  uint16_t lo = 0, hi = max_finite;  // largest pattern with decode <= target
  if (target >= decode(max_finite)) {
    const double next = 2 * decode(max_finite) - decode(max_finite - 1);  // one step further
    return sign | (target >= (decode(max_finite) + next) / 2 ? inf : max_finite);
  }
  while (lo < hi) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (decode(mid) <= target)
      lo = mid;
    else
      hi = mid - 1;
  }
  const double below = decode(lo), above = decode(lo + 1);
  uint16_t pick;
  if (target - below < above - target) {
    pick = lo;
  } else if (target - below > above - target) {
    pick = lo + 1;
  } else {
    pick = (lo % 2 == 0) ? lo : lo + 1;
  }
  return sign | pick;
}

uint16_t ReferenceHalf(float v) { return NearestPattern(v, HalfValue, 0x7BFF); }
uint16_t ReferenceBFloat16(float v) { return NearestPattern(v, BFloat16Value, 0x7F7F); }

bool SameHalfResult(uint16_t a, uint16_t b) {
  const bool a_nan = (a & 0x7C00) == 0x7C00 && (a & 0x3FF);
  const bool b_nan = (b & 0x7C00) == 0x7C00 && (b & 0x3FF);
  return a_nan ? b_nan : a == b;
}

bool SameBFloat16Result(uint16_t a, uint16_t b) {
  const bool a_nan = (a & 0x7F80) == 0x7F80 && (a & 0x7F);
  const bool b_nan = (b & 0x7F80) == 0x7F80 && (b & 0x7F);
  return a_nan ? b_nan : a == b;
}

std::vector<float> InterestingFloats(std::mt19937_64& rng) {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -1.0f,
                               65504.0f,
                               65519.99f,
                               65520.0f,
                               1e10f,
                               -1e10f,
                               INFINITY,
                               -INFINITY,
                               NAN,
                               std::ldexp(1.0f, -25),
                               std::ldexp(1.0f, -25) * 1.0001f,
                               std::ldexp(1.0f, -24),
                               std::ldexp(1.0f, -14),
                               std::ldexp(1.0f, -15) * 3,
                               1e-30f,
                               3.3895314e38f,
                               FLT_MAX};
  // Exact midpoints between neighbouring halves and bfloat16s: the tie rule decides.
  for (int i = 0; i < 2000; ++i) {
    const uint16_t h = static_cast<uint16_t>(rng() % 0x7BFF);
    values.push_back(static_cast<float>((HalfValue(h) + HalfValue(h + 1)) / 2));
    const uint16_t b = static_cast<uint16_t>(rng() % 0x7F7F);
    values.push_back(static_cast<float>((BFloat16Value(b) + BFloat16Value(b + 1)) / 2));
  }
  // Random bit patterns over the whole float range, and values at half-precision magnitudes.
  for (int i = 0; i < 20000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    float v;
    std::memcpy(&v, &bits, 4);
    values.push_back(v);
    const int exponent = static_cast<int>(rng() % 50) - 30;
    values.push_back(std::ldexp(static_cast<float>(rng() % (1 << 24)) / (1 << 24) + 1.0f, exponent) *
                     ((rng() & 1) ? -1.0f : 1.0f));
  }
  return values;
}

TEST(CheckpointNumericTest, HalfConversionRoundsToNearestEven) {
  std::random_device device;
  std::mt19937_64 rng((uint64_t{device()} << 32) | device());
  for (float v : InterestingFloats(rng)) {
    const uint16_t got = checkpoint::FloatToHalf(v);
    const uint16_t want = ReferenceHalf(v);
    ASSERT_TRUE(SameHalfResult(got, want))
        << std::hexfloat << v << " -> " << std::hex << got << " want " << want;
  }
}

TEST(CheckpointNumericTest, BFloat16ConversionRoundsToNearestEven) {
  std::random_device device;
  std::mt19937_64 rng((uint64_t{device()} << 32) | device());
  for (float v : InterestingFloats(rng)) {
    const uint16_t got = checkpoint::FloatToBFloat16(v);
    const uint16_t want = ReferenceBFloat16(v);
    ASSERT_TRUE(SameBFloat16Result(got, want))
        << std::hexfloat << v << " -> " << std::hex << got << " want " << want;
  }
}

TEST(CheckpointNumericTest, NormalStreamIsRandomAccess) {
  std::random_device device;
  const uint64_t seed = device();
  const checkpoint::NormalStream stream(seed, "model.layers.0.mlp.up_proj.weight");
  std::vector<float> whole(1001);
  stream.Fill(0, whole.size(), whole.data());
  // Any sub-range, odd starts included, must match the same positions of the whole.
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 100; ++trial) {
    const uint64_t start = rng() % whole.size();
    const uint64_t count = rng() % (whole.size() - start + 1);
    std::vector<float> part(count);
    stream.Fill(start, count, part.data());
    for (uint64_t i = 0; i < count; ++i) ASSERT_EQ(part[i], whole[start + i]) << start << "+" << i;
  }
  const checkpoint::NormalStream other(seed, "model.layers.0.mlp.down_proj.weight");
  std::vector<float> different(whole.size());
  other.Fill(0, different.size(), different.data());
  EXPECT_NE(whole, different);
}

TEST(CheckpointGeneratorTest, HalfAndBFloat16FilesAreRoundedFixtureValues) {
  TempDir scratch;
  auto single = CheckpointReader::Open(kFixture);
  ASSERT_TRUE(single.ok()) << single.status();
  for (const char* dtype : {"float16", "bfloat16"}) {
    const std::string out = scratch.Sub(dtype);
    RunResult result =
        RunGenerator(std::string("--preset tiny --seed 7 --dtype ") + dtype + " --out " + out, scratch);
    ASSERT_EQ(result.exit_code, 0) << result.output;
    auto reader = CheckpointReader::Open(out);
    ASSERT_TRUE(reader.ok()) << reader.status();
    const bool half = std::string(dtype) == "float16";
    for (const std::string& name : (*single)->Names()) {
      const std::vector<float> reference = AsFloats(*(*single)->Find(name));
      const TensorView* view = (*reader)->Find(name);
      ASSERT_NE(view, nullptr) << name;
      ASSERT_EQ(view->dtype, half ? DType::kF16 : DType::kBF16);
      ASSERT_EQ(view->numel(), static_cast<int64_t>(reference.size()));
      std::vector<uint16_t> bits(reference.size());
      std::memcpy(bits.data(), view->data, view->nbytes);
      for (size_t i = 0; i < reference.size(); ++i) {
        const uint16_t want = half ? ReferenceHalf(reference[i]) : ReferenceBFloat16(reference[i]);
        ASSERT_EQ(bits[i], want) << name << "[" << i << "] = " << reference[i];
      }
    }
  }
}

}  // namespace
}  // namespace squat
