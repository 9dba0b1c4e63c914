// The engine: validates requests, queues them, and runs them on one engine thread that owns
// the model and the KV caches. Each step the scheduler picks prompt chunks and one decode token
// per running sequence; the model runs them in one batched pass; each sequence samples its next
// token and streams it out.
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
#include "kvcache/device_memory.h"
#include "kvcache/kv_cache.h"
#include "runtime/llama_model.h"
#include "runtime/log.h"
#include "runtime/model_config.h"
#include "runtime/scheduler.h"
#include "runtime/safetensors.h"
#include "runtime/step_runner.h"
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

class EngineImpl : public Engine {
 public:
  EngineImpl(EngineOptions options, ModelConfig config, std::unique_ptr<Tokenizer> tokenizer,
             std::unique_ptr<CheckpointReader> checkpoint, std::unique_ptr<LlamaModel> model,
             std::unique_ptr<kv::KvCacheManager> kv_manager, std::unique_ptr<StepRunner> runner,
             std::vector<int32_t> eos_ids)
      : options_(std::move(options)),
        config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        checkpoint_(std::move(checkpoint)),
        model_(std::move(model)),
        kv_manager_(std::move(kv_manager)),
        runner_(std::move(runner)),
        eos_ids_(eos_ids.begin(), eos_ids.end()),
        eos_list_(std::move(eos_ids)) {
    max_model_len_ = options_.max_model_len > 0
                         ? std::min<int64_t>(options_.max_model_len, config_.max_position_embeddings)
                         : config_.max_position_embeddings;
    max_prompt_tokens_ =
        options_.max_prompt_tokens > 0 ? std::min<int64_t>(options_.max_prompt_tokens, max_model_len_ - 1)
                                       : max_model_len_ - 1;
    SchedulerLimits limits;
    limits.max_batched_tokens = options_.max_num_batched_tokens;
    limits.max_prefill_chunk = options_.max_prefill_chunk;
    limits.max_running = options_.max_num_seqs;
    scheduler_ = std::make_unique<Scheduler>(*kv_manager_, limits);
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
    // Quantized formats stage the prompt in full precision until it is complete.
    const int64_t prompt_capacity = kv_manager_->PromptCapacityTokens(*format);
    if (static_cast<int64_t>(prompt_ids.size()) > prompt_capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt has ", prompt_ids.size(), " tokens; the KV pool can take a prompt of at most ", prompt_capacity,
          " tokens in format '", kv::KvMethodName(format->method), "'"));
    }

    auto seq = std::make_unique<Sequence>();
    seq->stream = std::make_shared<RequestStream>(request.request_id);
    seq->kv_format = *format;
    seq->submitted = Clock::now();
    seq->prompt_len = static_cast<int64_t>(prompt_ids.size());
    seq->max_new_tokens = std::min<int64_t>(
        {static_cast<int64_t>(sampling.max_tokens), max_model_len_ - seq->prompt_len, capacity - seq->prompt_len});
    seq->sampler = std::make_unique<Sampler>(sampling, prompt_ids,
                                             std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32));
    seq->decoder = std::make_unique<StreamingDecoder>(*tokenizer_);
    seq->stops = std::make_unique<StopMatcher>(sampling.stop);
    seq->tokens = std::move(prompt_ids);
    seq->request = std::move(request);
    std::shared_ptr<RequestStream> stream = seq->stream;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("server is shutting down; not accepting new requests");
      if (static_cast<int64_t>(incoming_.size()) + scheduler_waiting_ >= options_.max_waiting) {
        return absl::ResourceExhaustedError(absl::StrCat("request queue is full (", options_.max_waiting,
                                                         " waiting); retry later"));
      }
      seq->arrival = next_arrival_++;
      incoming_.push_back(std::move(seq));
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
    if (model_->device().is_cuda()) {
      d.workspace_bytes = model_->WorkspaceBytes(options_.max_num_batched_tokens, options_.max_num_seqs);
    }
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

  EngineStats Stats() const override {
    EngineStats stats;
    stats.steps = steps_.load();
    stats.preemptions = preemptions_.load();
    std::lock_guard<std::mutex> lock(mu_);
    stats.running = scheduler_running_;
    stats.waiting = scheduler_waiting_ + static_cast<int64_t>(incoming_.size());
    return stats;
  }

  void StopAccepting() override { accepting_.store(false); }

  bool WaitIdle(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, timeout, [this] { return incoming_.empty() && !busy_; });
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
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !incoming_.empty() || !scheduler_->empty(); });
        while (!incoming_.empty()) {
          scheduler_->Enqueue(std::move(incoming_.front()));
          incoming_.pop_front();
        }
        // Submit counts incoming_ + scheduler_waiting_ against max_waiting: the requests just
        // moved must stay counted while the step runs.
        scheduler_waiting_ = scheduler_->num_waiting();
        busy_ = !scheduler_->empty();
      }
      const bool stopping = stopping_.load();
      // Cancelled requests leave before the step, so their pages are free for it.
      for (auto& seq : scheduler_->TakeCancelled(/*all=*/stopping)) {
        Finish(std::move(seq), FinishReason::kCancelled,
               stopping ? "engine shut down before the request finished" : "");
      }
      if (!stopping && !scheduler_->empty()) Step();
      {
        std::lock_guard<std::mutex> lock(mu_);
        scheduler_running_ = scheduler_->num_running();
        scheduler_waiting_ = scheduler_->num_waiting();
        busy_ = !scheduler_->empty() || !incoming_.empty();
      }
      preemptions_.store(scheduler_->preemptions());
      if (!busy_) idle_cv_.notify_all();
      if (stopping) break;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Requests that raced with shutdown.
      while (!incoming_.empty()) {
        Finish(std::move(incoming_.front()), FinishReason::kCancelled, "engine shut down before the request started");
        incoming_.pop_front();
      }
      busy_ = false;
    }
    idle_cv_.notify_all();
  }

  // One batched forward pass over the scheduler's plan, then sampling and streaming.
  void Step() {
    const auto step_start = Clock::now();
    const int64_t preemptions_before = scheduler_->preemptions();
    StepPlan plan = scheduler_->Plan();
    {
      // Admissions leave the waiting count before this step streams any final event, so a
      // client that submits again on its response is not refused by a stale count.
      std::lock_guard<std::mutex> lock(mu_);
      scheduler_waiting_ = scheduler_->num_waiting();
    }
    if (options_.observer != nullptr && scheduler_->preemptions() > preemptions_before) {
      options_.observer->OnPreemptions(scheduler_->preemptions() - preemptions_before);
    }
    for (auto& [seq, status] : plan.failed) {
      log::Error(absl::StrCat("request ", seq->request.request_id, ": ", status.message()));
      Finish(std::move(seq), FinishReason::kError, std::string(status.message()));
    }
    UpdatePoolUsage();
    if (plan.chunks.empty()) return;

    std::vector<StepEntry> entries;
    entries.reserve(plan.chunks.size());
    bool feeds_prompt = false;
    int64_t rows = 0;
    for (const ScheduledChunk& chunk : plan.chunks) {
      Sequence& seq = *chunk.seq;
      feeds_prompt |= seq.state() == SequenceState::kPrefilling;
      StepEntry entry;
      entry.cache = seq.cache.get();
      entry.tokens = seq.tokens.data() + seq.computed();
      entry.num_tokens = chunk.num_tokens;
      entry.prompt_complete = chunk.prompt_complete;
      entries.push_back(entry);
      rows += chunk.num_tokens;
    }

    at::Tensor logits;
    try {
      logits = runner_->Run(entries);
    } catch (const std::exception& e) {
      // A failed pass leaves every cache of the batch half-written: end those requests.
      std::string error = e.what();
      // c10 errors carry a long backtrace after the first line; keep the message readable.
      if (auto nl = error.find('\n'); nl != std::string::npos) error.resize(nl);
      log::Error(absl::StrCat("step of ", plan.chunks.size(), " sequences failed: ", error));
      for (const ScheduledChunk& chunk : plan.chunks) {
        Finish(scheduler_->Release(chunk.seq), FinishReason::kError, "generation failed: " + error);
      }
      return;
    }
    for (const ScheduledChunk& chunk : plan.chunks) chunk.seq->StepDone();
    steps_.fetch_add(1);
    UpdatePoolUsage();  // completed prompts released their full-precision staging

    const SampledRows sampled = CopyForSampling(logits, plan.chunks);
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      const ScheduledChunk& chunk = plan.chunks[i];
      if (!chunk.samples) continue;  // mid-prompt or replaying generated tokens
      const int64_t host_row = sampled.host_row[i];
      const SampledToken token =
          host_row < 0 ? chunk.seq->sampler->AcceptArgmax(sampled.argmax[i])
                       : chunk.seq->sampler->Sample(sampled.rows + host_row * sampled.vocab,
                                                    sampled.vocab);
      const FinishReason reason = AcceptToken(*chunk.seq, token);
      if (reason != FinishReason::kNone) Finish(scheduler_->Release(chunk.seq), reason, "");
    }
    if (options_.observer != nullptr) {
      StepInfo info;
      info.prefill = feeds_prompt;
      info.num_sequences = static_cast<int32_t>(plan.chunks.size());
      info.num_tokens = rows;
      info.duration_seconds = SecondsBetween(step_start, Clock::now());
      options_.observer->OnStep(info);
    }
  }

  // What sampling needs from the step's logits [chunks, vocab] (on the model's device): plain
  // greedy sequences take the argmax there, the others their whole row on the host, so that a
  // large greedy batch moves a few bytes per sequence over PCIe instead of a vocabulary row.
  struct SampledRows {
    at::Tensor host;                 // rows of the sequences that sample on the host
    float* rows = nullptr;
    int32_t vocab = 0;
    std::vector<int64_t> host_row;   // per chunk: its row in `host`, or -1 (argmax)
    std::vector<int32_t> argmax;     // per chunk, valid where host_row is -1
  };
  static SampledRows CopyForSampling(const at::Tensor& logits,
                                     const std::vector<ScheduledChunk>& chunks) {
    SampledRows out;
    out.vocab = static_cast<int32_t>(logits.size(1));
    out.host_row.assign(chunks.size(), -1);
    out.argmax.assign(chunks.size(), -1);
    std::vector<int64_t> host_rows;
    bool any_argmax = false;
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (!chunks[i].samples) continue;
      if (chunks[i].seq->sampler->IsPlainGreedy()) {
        any_argmax = true;
      } else {
        out.host_row[i] = static_cast<int64_t>(host_rows.size());
        host_rows.push_back(static_cast<int64_t>(i));
      }
    }
    if (any_argmax) {
      const at::Tensor ids = logits.argmax(1).to(at::kCPU).contiguous();
      const int64_t* id = ids.data_ptr<int64_t>();
      for (size_t i = 0; i < chunks.size(); ++i) out.argmax[i] = static_cast<int32_t>(id[i]);
    }
    if (!host_rows.empty()) {
      at::Tensor rows = logits;
      if (host_rows.size() != chunks.size()) {
        rows = logits.index_select(
            0, at::tensor(host_rows, at::TensorOptions().dtype(at::kLong)).to(logits.device()));
      }
      out.host = rows.to(at::kCPU, at::kFloat).contiguous();
      out.rows = out.host.data_ptr<float>();
    }
    return out;
  }

  // Streams a sampled token; returns why the sequence ends, or kNone.
  FinishReason AcceptToken(Sequence& seq, const SampledToken& token) {
    const auto& sampling = seq.request.sampling;
    if (seq.generated() == 0) {  // the first token (a recomputation replays the ones it had)
      seq.timings.time_to_first_token_seconds = SecondsBetween(seq.submitted, Clock::now());
    }
    if (!sampling.ignore_eos && eos_ids_.count(token.token_id)) return FinishReason::kEos;
    if (std::find(sampling.stop_token_ids.begin(), sampling.stop_token_ids.end(), token.token_id) !=
        sampling.stop_token_ids.end()) {
      return FinishReason::kStop;
    }
    seq.tokens.push_back(token.token_id);
    GenerationEvent event;
    event.token_ids.push_back(token.token_id);
    if (sampling.logprobs > 0) event.logprobs.push_back(token.logprob);
    event.text = seq.stops->Append(seq.decoder->Push(token.token_id));
    event.prompt_tokens = static_cast<int32_t>(seq.prompt_len);
    event.completion_tokens = static_cast<int32_t>(seq.generated());
    event.time_seconds = SecondsBetween(seq.submitted, Clock::now());
    seq.stream->Push(std::move(event));
    if (seq.stops->stopped()) return FinishReason::kStop;
    if (seq.generated() >= seq.max_new_tokens) return FinishReason::kLength;
    return FinishReason::kNone;
  }

  // Frees the sequence's pages, then sends its final event (so that a consumer who sees the
  // end also sees the pages back in PoolUsage).
  void Finish(std::unique_ptr<Sequence> seq, FinishReason reason, const std::string& error) {
    if (!seq) return;
    GenerationEvent last;
    if (reason == FinishReason::kLength || reason == FinishReason::kEos) {
      last.text = seq->stops->Append(seq->decoder->Flush());
      if (!seq->stops->stopped()) last.text += seq->stops->Flush();
      else reason = FinishReason::kStop;
    }
    seq->MoveTo(SequenceState::kFinished);
    seq->cache.reset();
    seq->resume.Release();
    UpdatePoolUsage();
    last.finished = true;
    last.finish_reason = reason;
    last.error_message = error;
    last.prompt_tokens = static_cast<int32_t>(seq->prompt_len);
    last.completion_tokens = static_cast<int32_t>(seq->generated());
    last.timings = seq->timings;
    last.timings.total_seconds = SecondsBetween(seq->submitted, Clock::now());
    last.time_seconds = last.timings.total_seconds;
    seq->stream->Push(std::move(last));
  }

  const EngineOptions options_;
  const ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<CheckpointReader> checkpoint_;  // keeps the weight mapping alive while loading
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<kv::KvCacheManager> kv_manager_;  // used by the engine thread only
  std::unique_ptr<StepRunner> runner_;             // engine thread only
  const std::unordered_set<int32_t> eos_ids_;
  const std::vector<int32_t> eos_list_;
  int64_t max_model_len_ = 0;
  int64_t max_prompt_tokens_ = 0;

  std::unique_ptr<Scheduler> scheduler_;  // engine thread only

  std::atomic<int64_t> pool_page_bytes_{0}, pool_total_pages_{0}, pool_used_pages_{0};
  std::atomic<int64_t> steps_{0}, preemptions_{0};
  std::atomic<bool> accepting_{true};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::unique_ptr<Sequence>> incoming_;  // submitted, not yet seen by the engine thread
  uint64_t next_arrival_ = 0;
  int64_t scheduler_waiting_ = 0;  // the scheduler's queue length after the last step
  int64_t scheduler_running_ = 0;
  bool busy_ = false;  // the engine thread holds sequences
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
  for (const auto& [name, value] : {std::pair<const char*, int32_t>{"max_num_seqs", options.max_num_seqs},
                                    {"max_num_batched_tokens", options.max_num_batched_tokens},
                                    {"max_prefill_chunk", options.max_prefill_chunk}}) {
    if (value <= 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be > 0, got ", value));
  }
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
  // RoPE table rows: every position a request can reach.
  load.max_positions = options.max_model_len > 0
                           ? std::min<int64_t>(options.max_model_len, config->max_position_embeddings)
                           : config->max_position_embeddings;
  auto model = LlamaModel::Load(**checkpoint, *config, load);
  if (!model.ok()) return model.status();
  log::Info(absl::StrFormat("model loaded in %.2f s", SecondsBetween(t0, Clock::now())));
  const kv::KvFormat default_format = DefaultKvFormat(options, config->head_dim, *default_method);
  if (auto status = kv::ValidateKvFormat(default_format, config->head_dim); !status.ok()) return status;
  int64_t pool_bytes = options.kv_pool_bytes > 0 ? options.kv_pool_bytes : (int64_t{1} << 30);
  if ((*model)->device().is_cuda()) {
    // Weights are loaded; the workspace is an estimate from the shapes; the KV pool is one
    // allocation of what the utilization share leaves (unless --kv-pool-mib fixes it).
    if (!(options.gpu_memory_utilization > 0 && options.gpu_memory_utilization <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("gpu_memory_utilization must be in (0, 1], got ",
                                                     options.gpu_memory_utilization));
    }
    const int64_t workspace = (*model)->WorkspaceBytes(options.max_num_batched_tokens, options.max_num_seqs);
    auto memory = kv::QueryDeviceMemory((*model)->device());
    if (!memory.ok()) return memory.status();
    if (options.kv_pool_bytes <= 0) {
      pool_bytes = kv::KvPoolBytesFor(*memory, options.gpu_memory_utilization, workspace);
      if (pool_bytes <= 0) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "no GPU memory left for the KV pool: %.2f of %.1f MiB is %.1f MiB, %.1f MiB are in use after loading "
            "the weights and the workspace needs %.1f MiB (raise --gpu-memory-utilization or lower "
            "--max-num-batched-tokens)",
            options.gpu_memory_utilization, memory->total_bytes / 1048576.0,
            options.gpu_memory_utilization * memory->total_bytes / 1048576.0,
            (memory->total_bytes - memory->free_bytes) / 1048576.0, workspace / 1048576.0));
      }
    }
    log::Info(absl::StrFormat("GPU memory: weights %.1f MiB, workspace %.1f MiB (estimate), KV pool %.1f MiB; "
                              "%.1f MiB in use of %.1f MiB before the pool",
                              (*model)->weight_bytes() / 1048576.0, workspace / 1048576.0, pool_bytes / 1048576.0,
                              (memory->total_bytes - memory->free_bytes) / 1048576.0,
                              memory->total_bytes / 1048576.0));
  }
  auto kv_manager = kv::KvCacheManager::Create((*model)->kv_shape(), default_format, pool_bytes);
  if (!kv_manager.ok()) return kv_manager.status();
  const kv::PoolStats pool = (*kv_manager)->stats();
  log::Info(absl::StrFormat("KV pool: %.1f MiB in %d pages of %d bytes; default format %s K%dV%d", pool.total_bytes() / 1048576.0,
                            pool.total_pages, pool.page_bytes, kv::KvMethodName(default_format.method),
                            default_format.k_bits, default_format.v_bits));
  auto runner = StepRunner::Create(**model, **kv_manager, options.max_num_batched_tokens, options.max_num_seqs);
  if (!runner.ok()) return runner.status();
  log::Info(absl::StrFormat("attention backend: %s", (*kv_manager)->backend().name()));
  auto eos = LoadEosTokenIds(options.model_dir, *config);
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(config), *std::move(tokenizer),
                                                *std::move(checkpoint), *std::move(model),
                                                *std::move(kv_manager), *std::move(runner), std::move(eos)));
}

}  // namespace squat
