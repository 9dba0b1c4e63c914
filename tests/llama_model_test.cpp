// LlamaModel against an independent float64 reference forward (own RMSNorm, RoPE with
// llama3/linear scaling from the formula, attention with explicit GQA head mapping, SwiGLU),
// run on checkpoints written by squat-make-checkpoint; plus the KV-cache paths (one token
// at a time, chunked prefill) and loader errors.
#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvcache/standalone_cache.h"
#include "tests/model_test_support.h"
#include "runtime/model/llama_model.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"

namespace squat {
namespace {

using nlohmann::json;

constexpr double kReferenceTolerance = 1e-4;  // log-softmax, float32 model vs float64 reference
// The cache paths run other matmul shapes than one full forward, so they round differently,
// by about as much as the model differs from the reference; a wrong position or mask is O(1).
constexpr double kCachePathTolerance = 1e-4;
// float16 compute (CUDA only) against the float64 reference.
constexpr double kHalfTolerance = 5e-2;

// ---------------------------------------------------------------------------------------------
// Reference model, float64, straight from the formulas; reads config.json itself.

struct RefRope {
  std::string type;  // "", "llama3", "linear"
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4, original_max_positions = 8192;
};

struct RefConfig {
  int64_t vocab = 0, hidden = 0, inter = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  double eps = 1e-6, theta = 10000;
  bool bias = false, tied = false;
  RefRope rope;
};

RefConfig ReadRefConfig(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  json j = json::parse(in);
  RefConfig c;
  c.vocab = j.at("vocab_size").get<int64_t>();
  c.hidden = j.at("hidden_size").get<int64_t>();
  c.inter = j.at("intermediate_size").get<int64_t>();
  c.layers = j.at("num_hidden_layers").get<int64_t>();
  c.heads = j.at("num_attention_heads").get<int64_t>();
  c.kv_heads = j.value("num_key_value_heads", c.heads);
  c.head_dim = (j.contains("head_dim") && !j["head_dim"].is_null()) ? j["head_dim"].get<int64_t>()
                                                                     : c.hidden / c.heads;
  c.eps = j.value("rms_norm_eps", 1e-6);
  // HF: Qwen2 always has q/k/v biases; Llama only with attention_bias.
  c.bias = j.value("model_type", std::string("llama")) == "qwen2" || j.value("attention_bias", false);
  c.tied = j.value("tie_word_embeddings", false);
  json rope = j.contains("rope_scaling") ? j["rope_scaling"] : json();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rope = j["rope_parameters"];
  c.theta = j.value("rope_theta", rope.is_object() ? rope.value("rope_theta", 10000.0) : 10000.0);
  if (rope.is_object()) {
    c.rope.type = rope.value("rope_type", rope.value("type", std::string()));
    if (c.rope.type == "default") c.rope.type.clear();
    c.rope.factor = rope.value("factor", 1.0);
    c.rope.low_freq_factor = rope.value("low_freq_factor", 1.0);
    c.rope.high_freq_factor = rope.value("high_freq_factor", 4.0);
    c.rope.original_max_positions = rope.value("original_max_position_embeddings", 8192.0);
  }
  return c;
}

// theta^(-2i/d), then the scaling rule of the rope type.
std::vector<double> RefInverseFrequencies(const RefConfig& c, bool apply_scaling) {
  std::vector<double> freqs(c.head_dim / 2);
  for (int64_t i = 0; i < c.head_dim / 2; ++i) {
    double f = std::pow(c.theta, -2.0 * i / c.head_dim);
    if (apply_scaling && c.rope.type == "linear") f /= c.rope.factor;
    if (apply_scaling && c.rope.type == "llama3") {
      const double wavelen = 2 * M_PI / f;
      const double low_wavelen = c.rope.original_max_positions / c.rope.low_freq_factor;
      const double high_wavelen = c.rope.original_max_positions / c.rope.high_freq_factor;
      if (wavelen > low_wavelen) {
        f /= c.rope.factor;  // long wavelengths: fully interpolated
      } else if (wavelen >= high_wavelen) {
        const double smooth = (c.rope.original_max_positions / wavelen - c.rope.low_freq_factor) /
                              (c.rope.high_freq_factor - c.rope.low_freq_factor);
        f = (1 - smooth) * f / c.rope.factor + smooth * f;
      }
    }
    freqs[i] = f;
  }
  return freqs;
}

class ReferenceLlama {
 public:
  ReferenceLlama(const std::string& dir, bool apply_rope_scaling = true)
      : config_(ReadRefConfig(dir)) {
    auto reader = CheckpointReader::Open(dir);
    EXPECT_TRUE(reader.ok()) << reader.status();
    for (const std::string& name : (*reader)->Names()) {
      const TensorView* view = (*reader)->Find(name);
      const at::ScalarType type = view->dtype == DType::kF16    ? at::kHalf
                                  : view->dtype == DType::kBF16 ? at::kBFloat16
                                                                : at::kFloat;
      EXPECT_TRUE(view->dtype == DType::kF16 || view->dtype == DType::kBF16 ||
                  view->dtype == DType::kF32);
      weights_[name] = at::from_blob(const_cast<void*>(view->data), view->shape, type)
                           .to(at::kDouble);
    }
    inv_freq_ = RefInverseFrequencies(config_, apply_rope_scaling);
  }

  const RefConfig& config() const { return config_; }

  // Logits [T, vocab] of the whole sequence, float64.
  at::Tensor Logits(const std::vector<int64_t>& tokens) const {
    const RefConfig& c = config_;
    const int64_t n = static_cast<int64_t>(tokens.size());
    at::Tensor x = W("model.embed_tokens.weight").index_select(0, at::tensor(tokens, at::kLong));
    for (int64_t l = 0; l < c.layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      at::Tensor h = Norm(x, W(p + "input_layernorm.weight"));
      at::Tensor q = Project(h, p + "self_attn.q_proj").view({n, c.heads, c.head_dim});
      at::Tensor k = Project(h, p + "self_attn.k_proj").view({n, c.kv_heads, c.head_dim});
      at::Tensor v = Project(h, p + "self_attn.v_proj").view({n, c.kv_heads, c.head_dim});
      q = Rotate(q);
      k = Rotate(k);
      at::Tensor attn = at::empty({n, c.heads, c.head_dim}, at::kDouble);
      const int64_t group = c.heads / c.kv_heads;
      for (int64_t head = 0; head < c.heads; ++head) {
        const int64_t kv = head / group;  // consecutive query heads share one KV head
        for (int64_t t = 0; t < n; ++t) {
          at::Tensor keys = k.select(1, kv).narrow(0, 0, t + 1);  // causal: positions <= t
          at::Tensor scores = at::mv(keys, q[t][head]) / std::sqrt(double(c.head_dim));
          at::Tensor weights = at::exp(scores - scores.max());
          weights = weights / weights.sum();
          attn[t][head] = at::mv(v.select(1, kv).narrow(0, 0, t + 1).t(), weights);
        }
      }
      x = x + at::matmul(attn.reshape({n, c.heads * c.head_dim}), W(p + "self_attn.o_proj.weight").t());
      h = Norm(x, W(p + "post_attention_layernorm.weight"));
      at::Tensor gate = at::matmul(h, W(p + "mlp.gate_proj.weight").t());
      at::Tensor up = at::matmul(h, W(p + "mlp.up_proj.weight").t());
      at::Tensor swish = gate / (1 + at::exp(-gate));
      x = x + at::matmul(swish * up, W(p + "mlp.down_proj.weight").t());
    }
    x = Norm(x, W("model.norm.weight"));
    const std::string head = c.tied ? "model.embed_tokens.weight" : "lm_head.weight";
    return at::matmul(x, W(head).t());
  }

 private:
  const at::Tensor& W(const std::string& name) const {
    auto it = weights_.find(name);
    if (it == weights_.end()) throw std::runtime_error("reference: missing " + name);
    return it->second;
  }

  at::Tensor Norm(const at::Tensor& x, const at::Tensor& weight) const {
    return x / at::sqrt((x * x).mean(-1, true) + config_.eps) * weight;
  }

  at::Tensor Project(const at::Tensor& h, const std::string& name) const {
    at::Tensor out = at::matmul(h, W(name + ".weight").t());
    return config_.bias ? out + W(name + ".bias") : out;
  }

  // Rotate-half RoPE: pair (i, i + d/2) turned by position * inv_freq[i]. x: [T, heads, d].
  at::Tensor Rotate(const at::Tensor& x) const {
    const int64_t half = config_.head_dim / 2;
    at::Tensor out = x.clone();
    auto in = x.accessor<double, 3>();
    auto o = out.accessor<double, 3>();
    for (int64_t t = 0; t < x.size(0); ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = t * inv_freq_[i], cs = std::cos(angle), sn = std::sin(angle);
        for (int64_t head = 0; head < x.size(1); ++head) {
          const double a = in[t][head][i], b = in[t][head][i + half];
          o[t][head][i] = a * cs - b * sn;
          o[t][head][i + half] = b * cs + a * sn;
        }
      }
    }
    return out;
  }

  RefConfig config_;
  std::map<std::string, at::Tensor> weights_;
  std::vector<double> inv_freq_;
};

// ---------------------------------------------------------------------------------------------
// Helpers

double MaxLogSoftmaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (at::log_softmax(a.to(at::kCPU, at::kDouble), -1) -
          at::log_softmax(b.to(at::kCPU, at::kDouble), -1))
      .abs()
      .max()
      .item<double>();
}

// Full forward vs the float64 reference, then every cache path vs the full forward.
void CheckModel(const std::string& dir, int64_t prompt_len, const ModelLoadOptions& options = {},
                double reference_tolerance = kReferenceTolerance,
                double cache_tolerance = kCachePathTolerance) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("model " + dir + " on " + options.device + ", token seed " + std::to_string(seed));
  auto loaded = LoadFrom(dir, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  LlamaModel& model = *loaded->model;
  ReferenceLlama reference(dir);
  const RefConfig& c = reference.config();
  ASSERT_EQ(model.config().vocab_size, c.vocab);
  if (options.device == "cpu") {
    EXPECT_EQ(model.dtype(), at::kFloat);  // "auto" on CPU
  }

  const std::vector<int64_t> tokens = RandomTokens(c.vocab, prompt_len, seed);
  const at::Tensor expected = reference.Logits(tokens);

  auto cache = NewCache(model, prompt_len + 4);
  const at::Tensor full = Forward(model, tokens, cache, /*last_only=*/false);
  ASSERT_EQ(full.scalar_type(), at::kFloat);
  ASSERT_EQ(full.sizes(), (std::vector<int64_t>{prompt_len, c.vocab}));
  EXPECT_EQ(cache->length(), prompt_len);
  EXPECT_LT(MaxLogSoftmaxDiff(full, expected), reference_tolerance);
  // The reference must be informative: logits spread over more than a nat at every position.
  EXPECT_GT((std::get<0>(expected.max(-1)) - std::get<0>(expected.min(-1))).min().item<double>(), 1.0);

  // One token at a time through the cache (the decode path).
  auto step_cache = NewCache(model, prompt_len);
  std::vector<at::Tensor> rows;
  for (int64_t t = 0; t < prompt_len; ++t) {
    rows.push_back(Forward(model, {tokens[t]}, step_cache, /*last_only=*/true));
    ASSERT_EQ(rows.back().sizes(), (std::vector<int64_t>{1, c.vocab}));
    EXPECT_EQ(step_cache->length(), t + 1);
  }
  const at::Tensor stepped = at::cat(rows, 0);
  EXPECT_LT(MaxLogSoftmaxDiff(stepped, full), cache_tolerance);
  EXPECT_LT(MaxLogSoftmaxDiff(stepped, expected), reference_tolerance);

  // Two prefill chunks (the second attends to the cached first).
  const int64_t split = prompt_len / 3 + 1;
  const std::vector<int64_t> first(tokens.begin(), tokens.begin() + split);
  const std::vector<int64_t> second(tokens.begin() + split, tokens.end());
  auto chunk_cache = NewCache(model, prompt_len);
  const at::Tensor a = Forward(model, first, chunk_cache, false);
  const at::Tensor b = Forward(model, second, chunk_cache, false);
  EXPECT_LT(MaxLogSoftmaxDiff(at::cat({a, b}, 0), full), cache_tolerance);

  // last_only returns the final row.
  auto last_cache = NewCache(model, prompt_len);
  const at::Tensor last = Forward(model, tokens, last_cache, /*last_only=*/true);
  ASSERT_EQ(last.sizes(), (std::vector<int64_t>{1, c.vocab}));
  EXPECT_LT(MaxLogSoftmaxDiff(last, full.narrow(0, prompt_len - 1, 1)), cache_tolerance);
}

class LlamaModelTest : public ::testing::Test {
 protected:
  TempDir tmp_;
};

// ---------------------------------------------------------------------------------------------
// Numerics per checkpoint variant

TEST_F(LlamaModelTest, TinyFixtureMatchesReference) { CheckModel(SQUAT_TINY_MODEL_DIR, 13); }

TEST_F(LlamaModelTest, LargerInitMatchesReference) {
  CheckModel(Generate(tmp_, "wide", "--preset tiny --seed 11"), 17);
}

TEST_F(LlamaModelTest, Qwen2BiasAndTiedEmbeddingsMatchReference) {
  const std::string dir = Generate(tmp_, "qwen2", "--preset tiny-qwen2 --seed 3");
  // The case only covers what it claims if the checkpoint really has biases and no lm_head.
  auto checkpoint = CheckpointReader::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_NE((*checkpoint)->Find("model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ((*checkpoint)->Find("lm_head.weight"), nullptr);
  ASSERT_TRUE(ReadRefConfig(dir).tied);
  CheckModel(dir, 11);
}

TEST_F(LlamaModelTest, Llama3RopeScalingMatchesReference) {
  const std::string dir =
      Generate(tmp_, "llama3", "--preset tiny --seed 5 --rope-scaling-llama3 "
                               "--rope-theta 500000 --max-position-embeddings 64");
  const RefConfig c = ReadRefConfig(dir);
  ASSERT_EQ(c.rope.type, "llama3");
  // The scaling must change some but not all frequencies, or this case proves nothing.
  const std::vector<double> plain = RefInverseFrequencies(c, false);
  const std::vector<double> scaled = RefInverseFrequencies(c, true);
  int changed = 0;
  for (size_t i = 0; i < plain.size(); ++i) changed += std::abs(plain[i] - scaled[i]) > 1e-12 * plain[i];
  EXPECT_GT(changed, 0);
  EXPECT_LT(changed, static_cast<int>(plain.size()));
  CheckModel(dir, 40);

  // And the model really applies it: unscaled RoPE gives measurably different logits.
  auto loaded = LoadFrom(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::vector<int64_t> tokens = RandomTokens(c.vocab, 40, std::random_device{}());
  auto cache = NewCache(*loaded->model, 40);
  const at::Tensor logits = Forward(*loaded->model, tokens, cache, false);
  const double unscaled = MaxLogSoftmaxDiff(logits, ReferenceLlama(dir, false).Logits(tokens));
  EXPECT_GT(unscaled, 1e-2);
}

TEST_F(LlamaModelTest, Float16CheckpointLoadsToFloat32) {
  CheckModel(Generate(tmp_, "f16", "--preset tiny --seed 8 --dtype float16"), 9);
}

TEST_F(LlamaModelTest, BFloat16CheckpointLoadsToFloat32) {
  CheckModel(Generate(tmp_, "bf16", "--preset tiny --seed 9 --dtype bfloat16"), 9);
}

TEST_F(LlamaModelTest, SingleKvHeadMatchesReference) {
  const std::string dir =
      Generate(tmp_, "mqa", "--preset tiny --seed 4 --num-kv-heads 1");
  ASSERT_EQ(ReadRefConfig(dir).kv_heads, 1);
  CheckModel(dir, 12);
}

TEST_F(LlamaModelTest, ShardedCheckpointMatchesReference) {
  const std::string dir = Generate(tmp_, "shards", "--preset tiny --seed 6 --shards 2");
  ASSERT_TRUE(FileExists(dir + "/model.safetensors.index.json"));
  CheckModel(dir, 10);
}

// The same checks on a GPU when this LibTorch has one (the GPU machine): float32 must match
// as on the CPU; float16 compute is checked against the same float64 reference, loosely.
TEST_F(LlamaModelTest, CudaMatchesReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = Generate(tmp_, "cuda", "--preset tiny --seed 12 --dtype float16");
  ModelLoadOptions f32;
  f32.device = "cuda";
  f32.dtype = "float32";
  CheckModel(dir, 33, f32);
  ModelLoadOptions half;
  half.device = "cuda:0";  // "auto" keeps the checkpoint's float16 on CUDA
  auto loaded = LoadFrom(dir, half);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->model->dtype(), at::kHalf);
  EXPECT_TRUE(loaded->model->device().is_cuda());
  CheckModel(dir, 33, half, kHalfTolerance, kHalfTolerance);
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping and errors

// Spec T11 / issue 3: greedy generation through the full-precision paged cache equals greedy
// generation without any cache (the float64 reference re-run over the whole sequence each step).
TEST_F(LlamaModelTest, GreedyWithFp16CacheEqualsGreedyWithoutCache) {
  TempDir tmp;
  const std::string dir = Generate(tmp, "greedy", "--preset tiny --seed 31");
  auto loaded = LoadFrom(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ReferenceLlama reference(dir);
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("prompt seed " + std::to_string(seed));
  std::vector<int64_t> tokens = RandomTokens(reference.config().vocab, 21, seed);
  const int64_t steps = 24;
  auto cache = NewCache(*loaded->model, static_cast<int64_t>(tokens.size()) + steps);
  std::vector<int64_t> cached_run = tokens, reference_run = tokens;
  at::Tensor logits = Forward(*loaded->model, tokens, cache);
  for (int64_t step = 0; step < steps; ++step) {
    cached_run.push_back(logits.argmax(-1).item<int64_t>());
    if (step + 1 < steps) logits = Forward(*loaded->model, {cached_run.back()}, cache);
    const at::Tensor full = reference.Logits(reference_run);
    reference_run.push_back(full[full.size(0) - 1].argmax().item<int64_t>());
  }
  EXPECT_EQ(cached_run, reference_run);
}

TEST_F(LlamaModelTest, WeightBytesAndCacheShape) {
  auto loaded = LoadFrom(SQUAT_TINY_MODEL_DIR);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const RefConfig c = ReadRefConfig(SQUAT_TINY_MODEL_DIR);
  int64_t elements = 0;  // every stored tensor once, as float32 on the CPU
  for (const std::string& name : loaded->checkpoint->Names()) {
    elements += loaded->checkpoint->Find(name)->numel();
  }
  EXPECT_EQ(loaded->model->weight_bytes(), elements * 4);
  auto cache = NewCache(*loaded->model, 5);
  EXPECT_DOUBLE_EQ(cache.manager().BytesPerToken(kv::FullPrecisionFormat()),
                   2.0 * c.layers * c.kv_heads * c.head_dim * 4);
  EXPECT_GT(cache->pages(), 0);
  // Overflowing the cache or an out-of-range id throws instead of corrupting state.
  EXPECT_THROW(Forward(*loaded->model, RandomTokens(c.vocab, 6, 1), cache), c10::Error);
  EXPECT_THROW(Forward(*loaded->model, {c.vocab}, cache), c10::Error);
  EXPECT_EQ(cache->length(), 0);
}

TEST_F(LlamaModelTest, RejectsBadOptions) {
  ModelLoadOptions device;
  device.device = "tpu";
  auto a = LoadFrom(SQUAT_TINY_MODEL_DIR, device);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("tpu"), std::string::npos) << a.status();
  ModelLoadOptions dtype;
  dtype.dtype = "float8";
  auto b = LoadFrom(SQUAT_TINY_MODEL_DIR, dtype);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("float8"), std::string::npos) << b.status();
}

// Copies the tiny checkpoint with `edit` applied to its tensor list.
std::string BrokenCopy(const TempDir& tmp, const std::string& name,
                       const std::function<void(std::vector<NamedTensor>&)>& edit) {
  auto source = CheckpointReader::Open(SQUAT_TINY_MODEL_DIR);
  EXPECT_TRUE(source.ok()) << source.status();
  std::vector<NamedTensor> tensors;
  for (const std::string& n : (*source)->Names()) tensors.push_back({n, *(*source)->Find(n)});
  edit(tensors);
  const std::string dir = tmp.Sub(name);
  EXPECT_EQ(mkdir(dir.c_str(), 0755), 0) << dir;
  std::ifstream config(std::string(SQUAT_TINY_MODEL_DIR) + "/config.json", std::ios::binary);
  std::ofstream(dir + "/config.json", std::ios::binary) << config.rdbuf();
  const absl::Status written = WriteSafetensors(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(written.ok()) << written;
  return dir;
}

TEST_F(LlamaModelTest, MissingTensorIsNamed) {
  const std::string victim = "model.layers.1.mlp.up_proj.weight";
  const std::string dir = BrokenCopy(tmp_, "missing", [&](std::vector<NamedTensor>& tensors) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [&](const NamedTensor& t) { return t.name == victim; }),
                  tensors.end());
  });
  auto loaded = LoadFrom(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(victim), std::string::npos) << loaded.status();
}

TEST_F(LlamaModelTest, MisshapenTensorIsNamed) {
  const std::string victim = "model.layers.0.self_attn.k_proj.weight";
  const std::string dir = BrokenCopy(tmp_, "misshapen", [&](std::vector<NamedTensor>& tensors) {
    for (NamedTensor& t : tensors) {
      if (t.name != victim) continue;
      t.view.shape[0] -= 1;  // one output row short
      t.view.nbytes = t.view.numel() * DTypeSize(t.view.dtype);
    }
  });
  auto loaded = LoadFrom(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(victim), std::string::npos) << loaded.status();
}

TEST_F(LlamaModelTest, MissingLmHeadIsNamedWhenNotTied) {
  ASSERT_FALSE(ReadRefConfig(SQUAT_TINY_MODEL_DIR).tied);
  const std::string dir = BrokenCopy(tmp_, "no_head", [](std::vector<NamedTensor>& tensors) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [](const NamedTensor& t) { return t.name == "lm_head.weight"; }),
                  tensors.end());
  });
  auto loaded = LoadFrom(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("lm_head.weight"), std::string::npos) << loaded.status();
}

}  // namespace
}  // namespace squat
