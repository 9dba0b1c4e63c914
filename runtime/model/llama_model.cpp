#include "runtime/model/llama_model.h"

#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvcache/attention_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/rope.h"
#include "kvcache/step_batch.h"
#include "runtime/model/model_memory.h"
#include "runtime/checkpoint/safetensors.h"

namespace squat {

// q/k/v and gate/up are stored fused so that each costs one GEMM per layer.
struct LlamaModel::Layer {
  at::Tensor input_norm;      // [hidden]
  at::Tensor post_attn_norm;  // [hidden]
  at::Tensor qkv;             // [(H + 2 * H_kv) * head_dim, hidden]
  at::Tensor qkv_bias;        // [(H + 2 * H_kv) * head_dim], undefined without attention_bias
  at::Tensor o_proj;          // [hidden, H * head_dim]
  at::Tensor gate_up;         // [2 * intermediate, hidden]
  at::Tensor down;            // [hidden, intermediate]
};

namespace {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<at::ScalarType> CheckpointScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF64: return at::kDouble;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported weight dtype ", DTypeName(dtype)));
  }
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  if (absl::StatusOr<bool> known = IsCudaDevice(name); !known.ok()) return known.status();
  try {
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "' requested but this LibTorch has no CUDA device"));
    }
    // Name the index ("cuda" -> "cuda:0") so that device comparisons with tensors hold.
    if (device.is_cuda() && !device.has_index()) device = at::Device(at::kCUDA, 0);
    return device;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad device '", name, "': ", e.what_without_backtrace()));
  }
}

// HF's inverse frequencies, op for op in float32 (python's `a / t` is t.reciprocal() * a).
at::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  auto exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = at::pow(c.rope_theta, exponent).reciprocal() * 1.0;
  if (!c.rope_scaling) return inv_freq;
  const RopeScaling& r = *c.rope_scaling;
  if (r.rope_type == "linear") return inv_freq / r.factor;
  if (r.rope_type != "llama3") return inv_freq;

  // transformers' _compute_llama3_parameters.
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / r.low_freq_factor;
  const double high_freq_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = inv_freq.reciprocal() * (2.0 * M_PI);
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  at::Tensor smooth = (wavelen.reciprocal() * old_len - r.low_freq_factor) /
                      (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1.0 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor is_medium = (wavelen < high_freq_wavelen).logical_not() &
                         (wavelen > low_freq_wavelen).logical_not();
  return at::where(is_medium, smoothed, scaled);
}

// HF semantics: normalise in float32, cast back, then scale by the weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor inv_rms = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * (xf * inv_rms).to(x.scalar_type());
}

class WeightLoader {
 public:
  WeightLoader(const CheckpointReader& checkpoint, at::Device device, at::ScalarType dtype)
      : checkpoint_(checkpoint), device_(device), dtype_(dtype) {}

  bool Has(const std::string& name) const { return checkpoint_.Find(name) != nullptr; }

  // Checks the tensor's shape and copies it, converted, onto the device; the mapped
  // file is read through a non-owning view and never copied whole.
  absl::StatusOr<at::Tensor> Load(const std::string& name, std::vector<int64_t> expected) const {
    const TensorView* view = checkpoint_.Find(name);
    if (view == nullptr) {
      return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor '", name, "'"));
    }
    if (view->shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ",
                                                     ShapeString(view->shape), ", expected ",
                                                     ShapeString(expected)));
    }
    auto source_type = CheckpointScalarType(view->dtype);
    if (!source_type.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': ", source_type.status().message()));
    }
    at::Tensor mapped = at::from_blob(const_cast<void*>(view->data), view->shape,
                                      at::TensorOptions().dtype(*source_type));
    return mapped.to(device_, dtype_, /*non_blocking=*/false, /*copy=*/true);
  }

 private:
  const CheckpointReader& checkpoint_;
  at::Device device_;
  at::ScalarType dtype_;
};

}  // namespace

LlamaModel::LlamaModel(const ModelConfig& config, at::Device device, std::string dtype_name)
    : config_(config), device_(device), dtype_name_(std::move(dtype_name)), dtype_(ScalarTypeOf(dtype_name_)) {}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const CheckpointReader& checkpoint,
                                                             const ModelConfig& config,
                                                             const ModelLoadOptions& options) {
  const ModelConfig& c = config;
  if (absl::Status valid = ValidateModelConfig(c); !valid.ok()) return valid;
  auto device = ParseDevice(options.device);
  if (!device.ok()) return device.status();

  const TensorView* embed_view = checkpoint.Find("model.embed_tokens.weight");
  if (embed_view == nullptr) {
    return absl::NotFoundError("checkpoint is missing tensor 'model.embed_tokens.weight'");
  }
  absl::StatusOr<std::string> dtype_name = LoadedWeightDtype(options.dtype, device->is_cuda(), embed_view->dtype);
  if (!dtype_name.ok()) return dtype_name.status();
  const at::ScalarType dtype = ScalarTypeOf(*dtype_name);

  c10::InferenceMode inference;
  std::unique_ptr<LlamaModel> model(new LlamaModel(c, *device, *dtype_name));
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, d = c.head_dim;
  const int64_t q_rows = c.num_attention_heads * d, kv_rows = c.num_key_value_heads * d;
  WeightLoader loader(checkpoint, *device, dtype);
  try {
#define SQUAT_LOAD(target, name, ...)                     \
  do {                                                    \
    auto loaded = loader.Load(name, __VA_ARGS__);         \
    if (!loaded.ok()) return loaded.status();             \
    target = std::move(*loaded);                          \
  } while (0)

    SQUAT_LOAD(model->embed_tokens_, "model.embed_tokens.weight", {c.vocab_size, hidden});
    model->layers_.resize(c.num_hidden_layers);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const std::string p = absl::StrCat("model.layers.", i, ".");
      Layer& layer = model->layers_[i];
      SQUAT_LOAD(layer.input_norm, p + "input_layernorm.weight", {hidden});
      SQUAT_LOAD(layer.post_attn_norm, p + "post_attention_layernorm.weight", {hidden});
      at::Tensor q, k, v, gate, up;
      SQUAT_LOAD(q, p + "self_attn.q_proj.weight", {q_rows, hidden});
      SQUAT_LOAD(k, p + "self_attn.k_proj.weight", {kv_rows, hidden});
      SQUAT_LOAD(v, p + "self_attn.v_proj.weight", {kv_rows, hidden});
      layer.qkv = at::cat({q, k, v}, 0);
      if (c.attention_bias) {
        SQUAT_LOAD(q, p + "self_attn.q_proj.bias", {q_rows});
        SQUAT_LOAD(k, p + "self_attn.k_proj.bias", {kv_rows});
        SQUAT_LOAD(v, p + "self_attn.v_proj.bias", {kv_rows});
        layer.qkv_bias = at::cat({q, k, v}, 0);
      }
      SQUAT_LOAD(layer.o_proj, p + "self_attn.o_proj.weight", {hidden, q_rows});
      SQUAT_LOAD(gate, p + "mlp.gate_proj.weight", {inter, hidden});
      SQUAT_LOAD(up, p + "mlp.up_proj.weight", {inter, hidden});
      layer.gate_up = at::cat({gate, up}, 0);
      SQUAT_LOAD(layer.down, p + "mlp.down_proj.weight", {hidden, inter});
    }
    SQUAT_LOAD(model->final_norm_, "model.norm.weight", {hidden});
    if (c.tie_word_embeddings) {
      model->lm_head_ = model->embed_tokens_;
    } else {
      SQUAT_LOAD(model->lm_head_, "lm_head.weight", {c.vocab_size, hidden});
    }
#undef SQUAT_LOAD
    if (options.max_positions < 0) return absl::InvalidArgumentError("max_positions must be >= 0");
    const int64_t positions = options.max_positions > 0 ? options.max_positions : c.max_position_embeddings;
    model->rope_table_ = kv::BuildRopeTable(RopeInverseFrequencies(c), positions, *device);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("loading weights onto ", options.device, ": ", e.what_without_backtrace()));
  }

  int64_t bytes = 0;
  auto count = [&bytes](const at::Tensor& t) {
    if (t.defined()) bytes += t.numel() * t.element_size();
  };
  count(model->embed_tokens_);
  count(model->final_norm_);
  if (!c.tie_word_embeddings) count(model->lm_head_);
  for (const Layer& l : model->layers_) {
    for (const at::Tensor* t : {&l.input_norm, &l.post_attn_norm, &l.qkv, &l.qkv_bias, &l.o_proj,
                                &l.gate_up, &l.down}) {
      count(*t);
    }
  }
  model->weight_bytes_ = bytes;
  return model;
}

int64_t LlamaModel::WorkspaceBytes(int64_t tokens, int64_t sequences) const {
  return squat::WorkspaceBytes(config_, static_cast<int64_t>(c10::elementSize(dtype_)), tokens, sequences,
                               rope_table_.size(0));
}

at::ScalarType ScalarTypeOf(const std::string& dtype) {
  if (dtype == "float16") return at::kHalf;
  if (dtype == "bfloat16") return at::kBFloat16;
  return at::kFloat;
}

kv::KvModelShape KvShapeOf(const ModelConfig& config, at::ScalarType dtype, at::Device device) {
  kv::KvModelShape shape;
  shape.num_layers = config.num_hidden_layers;
  shape.num_kv_heads = config.num_key_value_heads;
  shape.num_attention_heads = config.num_attention_heads;
  shape.head_dim = config.head_dim;
  shape.compute_dtype = dtype;
  shape.device = device;
  return shape;
}

kv::KvModelShape LlamaModel::kv_shape() const {
  kv::KvModelShape shape = KvShapeOf(config_, dtype_, device_);
  shape.rope_table = rope_table_;
  return shape;
}

at::Tensor LlamaModel::Forward(const kv::StepBatch& batch, kv::AttentionBackend& backend) {
  c10::InferenceMode inference;
  const int64_t num_rows = batch.num_rows();
  TORCH_CHECK(num_rows > 0, "Forward: the step has no rows");
  const at::Tensor tokens = batch.tokens();
  TORCH_CHECK(tokens.device() == device_, "Forward: the step's buffers are on ", tokens.device(),
              ", the model on ", device_);
  if (tokens.device().is_cpu()) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < config_.vocab_size, "Forward: token id out of range [0, ", config_.vocab_size,
                "): ", lo < 0 ? lo : hi);
  }
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const double eps = config_.rms_norm_eps;

  // The rows' angles from the model's one RoPE table: [N, 1, d], broadcast over heads.
  const kv::RopeAngles angles = kv::RopeRows(rope_table_, batch.positions(), dtype_);
  const at::Tensor cos = angles.cos.unsqueeze(1), sin = angles.sin.unsqueeze(1);

  at::Tensor x = at::embedding(embed_tokens_, tokens);  // [N, hidden]
  for (int64_t i = 0; i < static_cast<int64_t>(layers_.size()); ++i) {
    const Layer& layer = layers_[i];
    at::Tensor h = RmsNorm(x, layer.input_norm, eps);
    at::Tensor qkv = layer.qkv_bias.defined() ? at::linear(h, layer.qkv, layer.qkv_bias)
                                              : at::linear(h, layer.qkv);
    // [N, heads * d] -> [N, heads, d]
    at::Tensor q = qkv.narrow(1, 0, heads * head_dim).view({num_rows, heads, head_dim});
    at::Tensor k = qkv.narrow(1, heads * head_dim, kv_heads * head_dim).view({num_rows, kv_heads, head_dim});
    at::Tensor v =
        qkv.narrow(1, (heads + kv_heads) * head_dim, kv_heads * head_dim).view({num_rows, kv_heads, head_dim});
    // The cache stores keys before or after RoPE depending on its format, so it gets both.
    const at::Tensor q_rot = kv::ApplyRope(q, cos, sin);
    const at::Tensor k_rot = kv::ApplyRope(k, cos, sin);
    at::Tensor attn = at::empty({num_rows, heads, head_dim}, q_rot.options());
    backend.Attend(i, batch, q_rot, k, k_rot, v, attn);
    x = x + at::linear(attn.view({num_rows, heads * head_dim}), layer.o_proj);

    h = RmsNorm(x, layer.post_attn_norm, eps);
    at::Tensor gate_up = at::linear(h, layer.gate_up);
    const int64_t inter = config_.intermediate_size;
    x = x + at::linear(at::silu(gate_up.narrow(1, 0, inter)) * gate_up.narrow(1, inter, inter),
                       layer.down);
  }
  return Logits(x.index_select(0, batch.logit_rows()));
}

at::Tensor LlamaModel::Logits(const at::Tensor& hidden) const {
  return at::linear(RmsNorm(hidden, final_norm_, config_.rms_norm_eps), lm_head_).to(at::kFloat);
}

}  // namespace squat
