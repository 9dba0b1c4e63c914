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
#include "kvcache/dense_kv_cache.h"
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

// KV formats this build can run. The quantized formats (kivi, squat, squat-post) arrive
// with the paged cache (issue 3); until then they are rejected with a clear message.
const std::vector<std::string>& AvailableKvFormats() {
  static const std::vector<std::string> formats = {"fp16"};
  return formats;
}

absl::Status ValidateKvFormat(const std::string& method) {
  const auto& formats = AvailableKvFormats();
  if (std::find(formats.begin(), formats.end(), method) != formats.end()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("unknown KV cache method '", method,
                                                 "'; available: ", absl::StrJoin(formats, ", ")));
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
  std::shared_ptr<RequestStream> stream;
  Clock::time_point submitted;
};

class EngineImpl : public Engine {
 public:
  EngineImpl(EngineOptions options, ModelConfig config, std::unique_ptr<Tokenizer> tokenizer,
             std::unique_ptr<CheckpointReader> checkpoint, std::unique_ptr<LlamaModel> model,
             std::vector<int32_t> eos_ids)
      : options_(std::move(options)),
        config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        checkpoint_(std::move(checkpoint)),
        model_(std::move(model)),
        eos_ids_(eos_ids.begin(), eos_ids.end()),
        eos_list_(std::move(eos_ids)) {
    max_model_len_ = options_.max_model_len > 0
                         ? std::min<int64_t>(options_.max_model_len, config_.max_position_embeddings)
                         : config_.max_position_embeddings;
    max_prompt_tokens_ =
        options_.max_prompt_tokens > 0 ? std::min<int64_t>(options_.max_prompt_tokens, max_model_len_ - 1)
                                       : max_model_len_ - 1;
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
    if (request.kv_method.empty()) request.kv_method = options_.kv_format;
    if (auto status = ValidateKvFormat(request.kv_method); !status.ok()) return status;
    if (request.k_bits != 0 || request.v_bits != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("k_bits/v_bits apply to quantized KV methods only; '", request.kv_method,
                       "' stores keys and values in full precision"));
    }

    auto stream = std::make_shared<RequestStream>(request.request_id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (static_cast<int32_t>(waiting_.size()) >= options_.max_waiting) {
        return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_waiting,
                                                         " waiting); retry later"));
      }
      waiting_.push_back(PendingRequest{std::move(request), std::move(prompt_ids), stream, Clock::now()});
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
    KvFormatDescription fp16;
    fp16.method = "fp16";
    // The full-precision cache stores keys and values in the model's compute dtype.
    const int64_t elem = c10::elementSize(model_->dtype());
    fp16.k_bits = fp16.v_bits = static_cast<int32_t>(elem * 8);
    fp16.bytes_per_token =
        2.0 * config_.num_hidden_layers * config_.num_key_value_heads * config_.head_dim * elem;
    // One sequence at a time, each with a cache of up to max_model_len tokens.
    fp16.capacity_tokens = static_cast<uint64_t>(max_model_len_);
    fp16.is_default = options_.kv_format == "fp16";
    d.kv_formats.push_back(fp16);
    return d;
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
    const int64_t budget = std::min<int64_t>(sampling.max_tokens, max_model_len_ - prompt_len);
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
        auto cache = model_->NewCache(prompt_len + budget);
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
  const std::unordered_set<int32_t> eos_ids_;
  const std::vector<int32_t> eos_list_;
  int64_t max_model_len_ = 0;
  int64_t max_prompt_tokens_ = 0;

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
  if (auto status = ValidateKvFormat(options.kv_format); !status.ok()) return status;
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
  auto eos = LoadEosTokenIds(options.model_dir, *config);
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(config), *std::move(tokenizer),
                                                *std::move(checkpoint), *std::move(model), std::move(eos)));
}

}  // namespace squat
