// The engine: validates requests, queues them, and runs them on one engine thread that owns
// the model and the KV caches. This walking-skeleton engine runs one sequence at a time;
// continuous batching replaces the run loop (issue 4) without changing the public API.
#include "runtime/engine.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kvcache/kv_cache.h"
#include "runtime/llama_model.h"
#include "runtime/log.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/stop_matcher.h"
#include "runtime/tokenizer.h"

namespace squat {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The engine-wide KV format from the flags; requests may override method and bits.
kv::KvFormat DefaultKvFormat(const EngineOptions& o, int64_t head_dim, kv::KvMethod method) {
  kv::KvFormat f;
  f.method = method;
  f.k_bits = method == kv::KvMethod::kFp16 ? 16 : o.kv_k_bits;
  f.v_bits = method == kv::KvMethod::kFp16 ? 16 : o.kv_v_bits;
  f.group_size = o.kv_group_size;
  f.residual_length = o.kv_residual_length;
  f.block_size = o.kv_block_size > 0 ? o.kv_block_size : head_dim / 2;
  f.subspace_dim = o.kv_subspace_dim;
  f.lambda = o.kv_lambda;
  f.shared_subspace = o.kv_shared_subspace;
  return f;
}

// eos ids from config.json, extended by generation_config.json when present.
std::vector<int32_t> LoadEosTokenIds(const std::string& model_dir, const ModelConfig& config) {
  std::vector<int32_t> ids = config.eos_token_ids;
  const auto path = std::filesystem::path(model_dir) / "generation_config.json";
  std::ifstream in(path);
  if (in) {
    // generation_config.json's eos_token_id is an int or a list, like config.json's.
    auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    std::vector<int32_t> extra;
    if (json.is_object() && json.contains("eos_token_id")) {
      const auto& eos = json["eos_token_id"];
      if (eos.is_number_integer()) extra.push_back(eos.get<int32_t>());
      if (eos.is_array()) {
        for (const auto& id : eos) {
          if (id.is_number_integer()) extra.push_back(id.get<int32_t>());
        }
      }
    }
    for (int32_t id : extra) {
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
  }
  return ids;
}

struct PendingRequest {
  GenerateRequest request;
  std::vector<int32_t> prompt_ids;
  kv::KvFormat kv_format;
  std::shared_ptr<RequestStream> stream;
  Clock::time_point submitted;
};

class EngineImpl : public Engine {
 public:
  EngineImpl(EngineOptions options, ModelConfig config, std::unique_ptr<Tokenizer> tokenizer,
             std::unique_ptr<CheckpointReader> checkpoint, std::unique_ptr<LlamaModel> model,
             std::unique_ptr<kv::KvCacheManager> kv_manager, std::vector<int32_t> eos_ids)
      : options_(std::move(options)),
        config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        checkpoint_(std::move(checkpoint)),
        model_(std::move(model)),
        kv_manager_(std::move(kv_manager)),
        eos_ids_(eos_ids.begin(), eos_ids.end()),
        eos_list_(std::move(eos_ids)) {
    max_model_len_ = options_.max_model_len > 0
                         ? std::min<int64_t>(options_.max_model_len, config_.max_position_embeddings)
                         : config_.max_position_embeddings;
    max_prompt_tokens_ =
        options_.max_prompt_tokens > 0 ? std::min<int64_t>(options_.max_prompt_tokens, max_model_len_ - 1)
                                       : max_model_len_ - 1;
    UpdatePoolUsage();
    thread_ = std::thread([this] { Run(); });
  }

  ~EngineImpl() override { Shutdown(); }

  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerateRequest request) override {
    if (!accepting_.load()) return absl::UnavailableError("server is draining; not accepting new requests");
    if (request.request_id.empty()) request.request_id = NewRequestId();

    std::vector<int32_t> prompt_ids;
    if (!request.prompt_token_ids.empty()) {
      prompt_ids = request.prompt_token_ids;
      const int32_t vocab = static_cast<int32_t>(config_.vocab_size);
      for (size_t i = 0; i < prompt_ids.size(); ++i) {
        if (prompt_ids[i] < 0 || prompt_ids[i] >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat("prompt token id ", prompt_ids[i], " at index ", i,
                                                         " is outside the vocabulary [0, ", vocab, ")"));
        }
      }
    } else {
      if (request.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
      prompt_ids = tokenizer_->Encode(request.prompt, request.add_special_tokens);
      if (prompt_ids.empty()) return absl::InvalidArgumentError("prompt encodes to zero tokens");
    }
    if (static_cast<int64_t>(prompt_ids.size()) > max_prompt_tokens_) {
      return absl::InvalidArgumentError(absl::StrCat("prompt has ", prompt_ids.size(),
                                                     " tokens; the limit is ", max_prompt_tokens_,
                                                     " (max model length ", max_model_len_, ")"));
    }

    auto& sampling = request.sampling;
    if (sampling.max_tokens <= 0) sampling.max_tokens = options_.default_max_tokens;
    if (sampling.max_tokens > options_.max_tokens_limit) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens ", sampling.max_tokens,
                                                     " exceeds the server limit of ",
                                                     options_.max_tokens_limit));
    }
    if (auto status = ValidateSamplingParams(sampling); !status.ok()) return status;
    auto format = ResolveKvFormat(request);
    if (!format.ok()) return format.status();
    const int64_t capacity = kv_manager_->CapacityTokens(*format);
    if (static_cast<int64_t>(prompt_ids.size()) >= capacity) {
      return absl::InvalidArgumentError(absl::StrCat("prompt has ", prompt_ids.size(), " tokens; the KV pool holds at most ",
                                                     capacity, " tokens of one sequence in format '",
                                                     kv::KvMethodName(format->method), "'"));
    }

    auto stream = std::make_shared<RequestStream>(request.request_id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (static_cast<int32_t>(waiting_.size()) >= options_.max_waiting) {
        return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_waiting,
                                                         " waiting); retry later"));
      }
      waiting_.push_back(PendingRequest{std::move(request), std::move(prompt_ids), *format, stream, Clock::now()});
    }
    cv_.notify_all();
    return stream;
  }

  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text,
                                                bool add_special_tokens) const override {
    return tokenizer_->Encode(text, add_special_tokens);
  }

  std::string TokenText(int32_t id) const override { return tokenizer_->IdToToken(id); }

  ModelDescription Describe() const override {
    ModelDescription d;
    d.model_dir = options_.model_dir;
    d.model_name = std::filesystem::path(options_.model_dir).filename().string();
    if (d.model_name.empty()) d.model_name = std::filesystem::path(options_.model_dir).parent_path().filename().string();
    d.architecture = config_.model_type;
    d.vocab_size = config_.vocab_size;
    d.hidden_size = config_.hidden_size;
    d.num_layers = config_.num_hidden_layers;
    d.num_attention_heads = config_.num_attention_heads;
    d.num_key_value_heads = config_.num_key_value_heads;
    d.head_dim = config_.head_dim;
    d.max_model_len = max_model_len_;
    switch (model_->dtype()) {
      case at::kFloat: d.dtype = "float32"; break;
      case at::kHalf: d.dtype = "float16"; break;
      case at::kBFloat16: d.dtype = "bfloat16"; break;
      default: d.dtype = std::string(c10::toString(model_->dtype()));
    }
    d.device = model_->device().str();
    d.eos_token_ids = eos_list_;
    d.weight_bytes = model_->weight_bytes();
    for (const kv::KvFormat& f : ListedFormats()) {
      KvFormatDescription desc;
      desc.method = kv::KvMethodName(f.method);
      // The full-precision format stores the model's dtype (float32 on CPU, fp16/bf16 on GPU).
      const int32_t full_bits = static_cast<int32_t>(c10::elementSize(model_->dtype()) * 8);
      desc.k_bits = f.method == kv::KvMethod::kFp16 ? full_bits : f.k_bits;
      desc.v_bits = f.method == kv::KvMethod::kFp16 ? full_bits : f.v_bits;
      desc.bytes_per_token = kv_manager_->BytesPerToken(f);
      desc.capacity_tokens = static_cast<uint64_t>(std::max<int64_t>(0, kv_manager_->CapacityTokens(f)));
      const kv::KvFormat& def = kv_manager_->default_format();
      desc.is_default = f.method == def.method && f.k_bits == def.k_bits && f.v_bits == def.v_bits;
      d.kv_formats.push_back(desc);
    }
    return d;
  }

  KvPoolUsage PoolUsage() const override {
    KvPoolUsage usage;
    usage.page_bytes = pool_page_bytes_.load();
    usage.total_pages = pool_total_pages_.load();
    usage.used_pages = pool_used_pages_.load();
    return usage;
  }

  void StopAccepting() override { accepting_.store(false); }

  bool WaitIdle(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, timeout, [this] { return waiting_.empty() && !busy_; });
  }

  void Shutdown() override {
    accepting_.store(false);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  // The request's method and bits over the engine default; everything else from the flags.
  absl::StatusOr<kv::KvFormat> ResolveKvFormat(const GenerateRequest& request) const {
    const kv::KvFormat& def = kv_manager_->default_format();
    kv::KvMethod method = def.method;
    if (!request.kv_method.empty()) {
      auto parsed = kv::ParseKvMethod(request.kv_method);
      if (!parsed.ok()) return parsed.status();
      method = *parsed;
    }
    kv::KvFormat f = DefaultKvFormat(options_, config_.head_dim, method);
    if (method == kv::KvMethod::kFp16) {
      if (request.k_bits != 0 || request.v_bits != 0) {
        return absl::InvalidArgumentError(
            "k_bits/v_bits apply to quantized KV methods only; 'fp16' stores keys and values in full precision");
      }
    } else {
      if (request.k_bits != 0) f.k_bits = request.k_bits;
      if (request.v_bits != 0) f.v_bits = request.v_bits;
    }
    if (auto status = kv::ValidateKvFormat(f, config_.head_dim); !status.ok()) return status;
    if (kv_manager_->CapacityTokens(f) <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("KV format '", kv::KvMethodName(method), "' with k_bits ",
                                                     f.k_bits, ", v_bits ", f.v_bits,
                                                     " does not fit this server's page size"));
    }
    return f;
  }

  // What GetModelInfo lists: fp16, and each quantized method at 2 and 4 bits (K = V).
  std::vector<kv::KvFormat> ListedFormats() const {
    std::vector<kv::KvFormat> formats;
    formats.push_back(DefaultKvFormat(options_, config_.head_dim, kv::KvMethod::kFp16));
    for (kv::KvMethod m : {kv::KvMethod::kKivi, kv::KvMethod::kSquatPre, kv::KvMethod::kSquatPost}) {
      for (int bits : {2, 4}) {
        kv::KvFormat f = DefaultKvFormat(options_, config_.head_dim, m);
        f.k_bits = f.v_bits = bits;
        if (kv::ValidateKvFormat(f, config_.head_dim).ok() && kv_manager_->CapacityTokens(f) > 0) {
          formats.push_back(f);
        }
      }
    }
    // The default may use other bits (e.g. K4V2): list it too.
    const kv::KvFormat& def = kv_manager_->default_format();
    bool listed = false;
    for (const auto& f : formats) {
      listed |= f.method == def.method && f.k_bits == def.k_bits && f.v_bits == def.v_bits;
    }
    if (!listed) formats.push_back(def);
    return formats;
  }

  void UpdatePoolUsage() {
    const kv::PoolStats stats = kv_manager_->stats();
    pool_page_bytes_.store(stats.page_bytes);
    pool_total_pages_.store(stats.total_pages);
    pool_used_pages_.store(stats.used_pages);
  }

  std::string NewRequestId() {
    static std::atomic<uint64_t> counter{0};
    std::mt19937_64 rng(std::random_device{}());
    std::ostringstream id;
    id << "req-" << std::hex << (rng() & 0xffffffffULL) << "-" << std::dec << counter.fetch_add(1);
    return id.str();
  }

  void Run() {
    at::InferenceMode inference_guard;
    while (true) {
      PendingRequest next;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
        if (waiting_.empty()) break;  // stopping and nothing left
        next = std::move(waiting_.front());
        waiting_.pop_front();
        busy_ = true;
      }
      if (stopping_) {
        Finish(next, FinishReason::kCancelled, "engine shut down before the request started");
      } else {
        RunOne(next);
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = false;
      }
      idle_cv_.notify_all();
    }
    idle_cv_.notify_all();
  }

  void Finish(const PendingRequest& req, FinishReason reason, const std::string& error) {
    GenerationEvent event;
    event.finished = true;
    event.finish_reason = reason;
    event.error_message = error;
    event.prompt_tokens = static_cast<int32_t>(req.prompt_ids.size());
    event.timings.total_seconds = SecondsBetween(req.submitted, Clock::now());
    req.stream->Push(std::move(event));
  }

  bool ShouldAbort(const PendingRequest& req) const {
    return req.stream->cancel_requested() || stopping_;
  }

  void RunOne(const PendingRequest& req) {
    const auto started = Clock::now();
    const auto& sampling = req.request.sampling;
    const int64_t prompt_len = static_cast<int64_t>(req.prompt_ids.size());
    const int64_t budget = std::min<int64_t>(
        {static_cast<int64_t>(sampling.max_tokens), max_model_len_ - prompt_len,
         kv_manager_->CapacityTokens(req.kv_format) - prompt_len});
    std::vector<int32_t> generated;
    Timings timings;
    timings.queue_seconds = SecondsBetween(req.submitted, started);
    FinishReason reason = FinishReason::kLength;
    std::string error;
    std::string text_tail;
    try {
      if (ShouldAbort(req)) {
        reason = FinishReason::kCancelled;
      } else {
        auto cache_or = kv_manager_->NewSequence(req.kv_format, prompt_len + budget);
        if (!cache_or.ok()) throw std::runtime_error(std::string(cache_or.status().message()));
        std::unique_ptr<kv::SequenceKvCache> cache = *std::move(cache_or);
        UpdatePoolUsage();
        Sampler sampler(sampling, req.prompt_ids, std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32));
        StreamingDecoder decoder(*tokenizer_);
        StopMatcher stops(sampling.stop);
        std::unordered_set<int32_t> stop_ids(sampling.stop_token_ids.begin(), sampling.stop_token_ids.end());
        auto cpu_long = at::TensorOptions().dtype(at::kLong);
        at::Tensor input =
            at::from_blob(const_cast<int32_t*>(req.prompt_ids.data()), {prompt_len}, at::TensorOptions().dtype(at::kInt))
                .to(cpu_long)
                .to(model_->device());
        reason = FinishReason::kLength;
        for (int64_t step = 0; step < budget; ++step) {
          if (ShouldAbort(req)) {
            reason = FinishReason::kCancelled;
            break;
          }
          at::Tensor logits = model_->Forward(input, *cache, /*last_only=*/true);
          at::Tensor row = logits.reshape({-1}).to(at::kCPU, at::kFloat).contiguous();
          SampledToken token = sampler.Sample(row.data_ptr<float>(), static_cast<int32_t>(row.numel()));
          if (step == 0) timings.time_to_first_token_seconds = SecondsBetween(req.submitted, Clock::now());
          if (!sampling.ignore_eos && eos_ids_.count(token.token_id)) {
            reason = FinishReason::kEos;
            break;
          }
          if (stop_ids.count(token.token_id)) {
            reason = FinishReason::kStop;
            break;
          }
          generated.push_back(token.token_id);
          GenerationEvent event;
          event.token_ids.push_back(token.token_id);
          if (sampling.logprobs > 0) event.logprobs.push_back(token.logprob);
          event.text = stops.Append(decoder.Push(token.token_id));
          const bool stopped = stops.stopped();
          event.prompt_tokens = static_cast<int32_t>(prompt_len);
          event.completion_tokens = static_cast<int32_t>(generated.size());
          req.stream->Push(std::move(event));
          if (stopped) {
            reason = FinishReason::kStop;
            break;
          }
          input = at::full({1}, static_cast<int64_t>(token.token_id), cpu_long).to(model_->device());
        }
        if (reason != FinishReason::kStop && reason != FinishReason::kCancelled) {
          text_tail = stops.Append(decoder.Flush());
          if (!stops.stopped()) text_tail += stops.Flush();
          else reason = FinishReason::kStop;
        }
      }
    } catch (const std::exception& e) {
      reason = FinishReason::kError;
      error = e.what();
      // c10 errors carry a long backtrace after the first line; keep the message readable.
      if (auto nl = error.find('\n'); nl != std::string::npos) error.resize(nl);
      log::Error(absl::StrCat("request ", req.request.request_id, ": generation failed: ", error));
    }
    UpdatePoolUsage();  // the sequence's pages went back to the pool with its cache
    GenerationEvent last;
    last.finished = true;
    last.finish_reason = reason;
    last.error_message = error;
    last.text = std::move(text_tail);
    last.prompt_tokens = static_cast<int32_t>(prompt_len);
    last.completion_tokens = static_cast<int32_t>(generated.size());
    timings.total_seconds = SecondsBetween(req.submitted, Clock::now());
    last.timings = timings;
    req.stream->Push(std::move(last));
  }

  const EngineOptions options_;
  const ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<CheckpointReader> checkpoint_;  // keeps the weight mapping alive while loading
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<kv::KvCacheManager> kv_manager_;  // used by the engine thread only
  const std::unordered_set<int32_t> eos_ids_;
  const std::vector<int32_t> eos_list_;
  int64_t max_model_len_ = 0;
  int64_t max_prompt_tokens_ = 0;

  std::atomic<int64_t> pool_page_bytes_{0}, pool_total_pages_{0}, pool_used_pages_{0};
  std::atomic<bool> accepting_{true};
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<PendingRequest> waiting_;
  bool busy_ = false;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  namespace fs = std::filesystem;
  const fs::path dir(options.model_dir);
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("model directory '", options.model_dir, "' does not exist"));
  }
  auto default_method = kv::ParseKvMethod(options.kv_format);
  if (!default_method.ok()) return default_method.status();
  const auto t0 = Clock::now();
  auto config = LoadModelConfig((dir / "config.json").string());
  if (!config.ok()) return config.status();
  auto tokenizer = Tokenizer::FromFile((dir / "tokenizer.json").string());
  if (!tokenizer.ok()) return tokenizer.status();
  if ((*tokenizer)->vocab_size() > config->vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json has ", (*tokenizer)->vocab_size(),
                                                   " tokens but the model's vocab_size is ", config->vocab_size));
  }
  auto checkpoint = CheckpointReader::Open(options.model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  log::Info(absl::StrFormat("loading %s (%d layers, hidden %d, %.1f MiB of weights) onto %s",
                            options.model_dir, config->num_hidden_layers, config->hidden_size,
                            (*checkpoint)->total_bytes() / 1048576.0, options.device));
  ModelLoadOptions load;
  load.device = options.device;
  load.dtype = options.dtype;
  auto model = LlamaModel::Load(**checkpoint, *config, load);
  if (!model.ok()) return model.status();
  log::Info(absl::StrFormat("model loaded in %.2f s", SecondsBetween(t0, Clock::now())));
  const kv::KvFormat default_format = DefaultKvFormat(options, config->head_dim, *default_method);
  if (auto status = kv::ValidateKvFormat(default_format, config->head_dim); !status.ok()) return status;
  const int64_t pool_bytes = options.kv_pool_bytes > 0 ? options.kv_pool_bytes : (int64_t{1} << 30);
  auto kv_manager = kv::KvCacheManager::Create((*model)->kv_shape(), default_format, pool_bytes);
  if (!kv_manager.ok()) return kv_manager.status();
  const kv::PoolStats pool = (*kv_manager)->stats();
  log::Info(absl::StrFormat("KV pool: %.1f MiB in %d pages of %d bytes; default format %s K%dV%d", pool.total_bytes() / 1048576.0,
                            pool.total_pages, pool.page_bytes, kv::KvMethodName(default_format.method),
                            default_format.k_bits, default_format.v_bits));
  auto eos = LoadEosTokenIds(options.model_dir, *config);
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(config), *std::move(tokenizer),
                                                *std::move(checkpoint), *std::move(model),
                                                *std::move(kv_manager), std::move(eos)));
}

}  // namespace squat
