// The engine (vLLM v1's EngineCore, in our terms): Submit admits a request on the caller's
// thread and queues it; one engine thread owns the model and the KV caches and runs steps. A
// step is three calls: Schedule (the scheduler picks prompt chunks and one decode token per
// running sequence), Execute (the step runner's one batched forward pass) and Update (the output
// processor samples and streams each sequence's next token; ended sequences free their pages).
#include "runtime/engine/engine.h"

#include <ATen/ATen.h>

#include <atomic>
#include <filesystem>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvcache/device_memory.h"
#include "kvcache/format_catalogue.h"
#include "kvcache/kv_cache.h"
#include "runtime/engine/admission.h"
#include "runtime/engine/options.h"
#include "runtime/model/llama_model.h"
#include "runtime/log/log.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/engine/output_processor.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/engine/scheduler.h"
#include "runtime/model/step_runner.h"
#include "runtime/tokenizer/tokenizer.h"

namespace squat {
namespace {

double SecondsSince(EngineClock::time_point start) {
  return std::chrono::duration<double>(EngineClock::now() - start).count();
}

double MiB(int64_t bytes) { return bytes / 1048576.0; }

// What Engine::Create loads; one engine owns it all.
struct EngineParts {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<CheckpointReader> checkpoint;  // keeps the weight mapping alive while loading
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<kv::FormatCatalogue> formats;
  std::unique_ptr<kv::KvCacheManager> kv;
  std::unique_ptr<StepRunner> runner;
  std::vector<int32_t> eos_ids;
};

class EngineImpl : public Engine {
 public:
  EngineImpl(EngineOptions options, EngineParts parts)
      : options_(std::move(options)),
        parts_(std::move(parts)),
        admission_(options_, parts_.config, *parts_.tokenizer, *parts_.formats, *parts_.kv),
        output_(parts_.eos_ids),
        scheduler_(*parts_.kv, SchedulerLimits{options_.max_num_batched_tokens, options_.max_prefill_chunk,
                                               options_.max_num_seqs}) {
    UpdatePoolUsage();
    thread_ = std::thread([this] { Run(); });
  }

  ~EngineImpl() override { Shutdown(); }

  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerateRequest request) override {
    if (!accepting_.load()) return absl::UnavailableError("server is draining; not accepting new requests");
    absl::StatusOr<std::unique_ptr<Sequence>> seq = admission_.Admit(std::move(request));
    if (!seq.ok()) return seq.status();
    std::shared_ptr<RequestStream> stream = (*seq)->stream;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("server is shutting down; not accepting new requests");
      if (static_cast<int64_t>(incoming_.size()) + scheduler_waiting_ >= options_.max_waiting) {
        return absl::ResourceExhaustedError(
            absl::StrCat("request queue is full (", options_.max_waiting, " waiting); retry later"));
      }
      (*seq)->arrival = next_arrival_++;
      incoming_.push_back(*std::move(seq));
    }
    cv_.notify_all();
    return stream;
  }

  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text, bool add_special_tokens) const override {
    return parts_.tokenizer->Encode(text, add_special_tokens);
  }

  std::string TokenText(int32_t id) const override { return parts_.tokenizer->IdToToken(id); }

  ModelDescription Describe() const override;

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
  void Run();

  // One engine step: plan, one batched forward pass, then the plan's outputs.
  void Step() {
    const auto start = EngineClock::now();
    const StepPlan plan = Schedule();
    if (plan.chunks.empty()) return;
    std::optional<at::Tensor> logits = Execute(plan);
    if (!logits.has_value()) return;
    Update(plan, *logits);
    ReportStep(plan, start);
  }
  StepPlan Schedule();
  // The step runner over the plan; on failure the batch's requests end (their caches are half
  // written) and there are no logits.
  std::optional<at::Tensor> Execute(const StepPlan& plan);
  void Update(const StepPlan& plan, const at::Tensor& logits);
  void ReportStep(const StepPlan& plan, EngineClock::time_point start) const;

  // Frees the sequence's pages, then sends its final event (so that a consumer who sees the
  // end also sees the pages back in PoolUsage).
  void Finish(std::unique_ptr<Sequence> seq, FinishReason reason, const std::string& error) {
    if (!seq) return;
    seq->MoveTo(SequenceState::kFinished);
    seq->cache.reset();
    seq->resume.Release();
    UpdatePoolUsage();
    output_.SendFinal(*seq, reason, error);
  }

  void UpdatePoolUsage() {
    const kv::PoolStats stats = parts_.kv->stats();
    pool_page_bytes_.store(stats.page_bytes);
    pool_total_pages_.store(stats.total_pages);
    pool_used_pages_.store(stats.used_pages);
  }

  const EngineOptions options_;
  EngineParts parts_;             // the model, caches and runner: engine thread only after Create
  const Admission admission_;     // callers' threads
  OutputProcessor output_;        // engine thread only
  Scheduler scheduler_;           // engine thread only

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

ModelDescription EngineImpl::Describe() const {
  const ModelConfig& config = parts_.config;
  const LlamaModel& model = *parts_.model;
  ModelDescription d;
  d.model_dir = options_.model_dir;
  d.model_name = std::filesystem::path(options_.model_dir).filename().string();
  if (d.model_name.empty()) d.model_name = std::filesystem::path(options_.model_dir).parent_path().filename().string();
  d.architecture = config.model_type;
  d.vocab_size = config.vocab_size;
  d.hidden_size = config.hidden_size;
  d.num_layers = config.num_hidden_layers;
  d.num_attention_heads = config.num_attention_heads;
  d.num_key_value_heads = config.num_key_value_heads;
  d.head_dim = config.head_dim;
  d.max_model_len = admission_.max_model_len();
  d.dtype = model.dtype_name();
  d.device = model.device().str();
  d.eos_token_ids = output_.eos_ids();
  d.weight_bytes = model.weight_bytes();
  d.workspace_bytes = model.WorkspaceBytes(options_.max_num_batched_tokens, options_.max_num_seqs);
  // The full-precision format stores the model's dtype (float32 on CPU, fp16/bf16 on GPU).
  const int32_t full_bits = static_cast<int32_t>(c10::elementSize(model.dtype()) * 8);
  for (const kv::ResolvedFormat& f : parts_.formats->Listed(*parts_.kv)) {
    KvFormatDescription desc;
    desc.label = f.label;
    desc.method = kv::KvMethodName(f.format.method);
    const bool full = f.format.method == kv::KvMethod::kFp16;
    desc.k_bits = full ? full_bits : f.format.k_bits;
    desc.v_bits = full ? full_bits : f.format.v_bits;
    desc.bytes_per_token = parts_.kv->BytesPerToken(f.format);
    desc.capacity_tokens = static_cast<uint64_t>(f.capacity_tokens);
    desc.is_default = f.is_default;
    d.kv_formats.push_back(desc);
  }
  return d;
}

void EngineImpl::Run() {
  at::InferenceMode inference_guard;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !incoming_.empty() || !scheduler_.empty(); });
      while (!incoming_.empty()) {
        scheduler_.Enqueue(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      // Submit counts incoming_ + scheduler_waiting_ against max_waiting: the requests just
      // moved must stay counted while the step runs.
      scheduler_waiting_ = scheduler_.num_waiting();
      busy_ = !scheduler_.empty();
    }
    const bool stopping = stopping_.load();
    // Cancelled requests leave before the step, so their pages are free for it.
    for (auto& seq : scheduler_.TakeCancelled(/*all=*/stopping)) {
      Finish(std::move(seq), FinishReason::kCancelled,
             stopping ? "engine shut down before the request finished" : "");
    }
    if (!stopping && !scheduler_.empty()) Step();
    {
      std::lock_guard<std::mutex> lock(mu_);
      scheduler_running_ = scheduler_.num_running();
      scheduler_waiting_ = scheduler_.num_waiting();
      busy_ = !scheduler_.empty() || !incoming_.empty();
    }
    preemptions_.store(scheduler_.preemptions());
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

StepPlan EngineImpl::Schedule() {
  const int64_t preemptions_before = scheduler_.preemptions();
  StepPlan plan = scheduler_.Plan();
  {
    // Admissions leave the waiting count before this step streams any final event, so a
    // client that submits again on its response is not refused by a stale count.
    std::lock_guard<std::mutex> lock(mu_);
    scheduler_waiting_ = scheduler_.num_waiting();
  }
  if (options_.observer != nullptr && scheduler_.preemptions() > preemptions_before) {
    options_.observer->OnPreemptions(scheduler_.preemptions() - preemptions_before);
  }
  for (auto& [seq, status] : plan.failed) {
    log::Error(absl::StrCat("request ", seq->request.request_id, ": ", status.message()));
    Finish(std::move(seq), FinishReason::kError, std::string(status.message()));
  }
  plan.failed.clear();
  UpdatePoolUsage();
  return plan;
}

std::optional<at::Tensor> EngineImpl::Execute(const StepPlan& plan) {
  std::vector<StepEntry> entries;
  entries.reserve(plan.chunks.size());
  for (const ScheduledChunk& chunk : plan.chunks) {
    Sequence& seq = *chunk.seq;
    StepEntry entry;
    entry.cache = seq.cache.get();
    entry.tokens = seq.tokens.data() + seq.computed();
    entry.num_tokens = chunk.num_tokens;
    entry.prompt_complete = chunk.prompt_complete;
    entries.push_back(entry);
  }
  try {
    at::Tensor logits = parts_.runner->Run(entries);
    steps_.fetch_add(1);
    return logits;
  } catch (const std::exception& e) {
    std::string error = e.what();
    // c10 errors carry a long backtrace after the first line; keep the message readable.
    if (auto nl = error.find('\n'); nl != std::string::npos) error.resize(nl);
    log::Error(absl::StrCat("step of ", plan.chunks.size(), " sequences failed: ", error));
    for (const ScheduledChunk& chunk : plan.chunks) {
      Finish(scheduler_.Release(chunk.seq), FinishReason::kError, "generation failed: " + error);
    }
    return std::nullopt;
  }
}

void EngineImpl::Update(const StepPlan& plan, const at::Tensor& logits) {
  for (const ScheduledChunk& chunk : plan.chunks) chunk.seq->StepDone();
  UpdatePoolUsage();  // completed prompts released their full-precision staging
  for (const OutputProcessor::Ended& ended : output_.Process(logits, plan.chunks)) {
    Finish(scheduler_.Release(ended.seq), ended.reason, "");
  }
}

void EngineImpl::ReportStep(const StepPlan& plan, EngineClock::time_point start) const {
  if (options_.observer == nullptr) return;
  StepInfo info;
  info.num_sequences = static_cast<int32_t>(plan.chunks.size());
  for (const ScheduledChunk& chunk : plan.chunks) {
    info.prefill |= chunk.prefill;
    info.num_tokens += chunk.num_tokens;
  }
  info.duration_seconds = SecondsSince(start);
  options_.observer->OnStep(info);
}

// The KV pool's bytes: kv_pool_bytes, or on CPU the default, or on CUDA what the utilization
// share leaves once the weights are loaded and the workspace is set aside.
absl::StatusOr<int64_t> KvPoolBytes(const EngineOptions& options, const LlamaModel& model) {
  if (!model.device().is_cuda()) return options.kv_pool_bytes > 0 ? options.kv_pool_bytes : kDefaultCpuKvPoolBytes;
  const int64_t workspace = model.WorkspaceBytes(options.max_num_batched_tokens, options.max_num_seqs);
  auto memory = kv::QueryDeviceMemory(model.device());
  if (!memory.ok()) return memory.status();
  int64_t pool_bytes = options.kv_pool_bytes;
  if (pool_bytes <= 0) {
    pool_bytes = kv::KvPoolBytesFor(*memory, options.gpu_memory_utilization, workspace);
    if (pool_bytes <= 0) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "no GPU memory left for the KV pool: %.2f of %.1f MiB is %.1f MiB, %.1f MiB are in use after loading "
          "the weights and the workspace needs %.1f MiB (raise --gpu-memory-utilization or lower "
          "--max-num-batched-tokens)",
          options.gpu_memory_utilization, MiB(memory->total_bytes),
          options.gpu_memory_utilization * MiB(memory->total_bytes), MiB(memory->total_bytes - memory->free_bytes),
          MiB(workspace)));
    }
  }
  log::Info(absl::StrFormat("GPU memory: weights %.1f MiB, workspace %.1f MiB (estimate), KV pool %.1f MiB; "
                            "%.1f MiB in use of %.1f MiB before the pool",
                            MiB(model.weight_bytes()), MiB(workspace), MiB(pool_bytes),
                            MiB(memory->total_bytes - memory->free_bytes), MiB(memory->total_bytes)));
  return pool_bytes;
}

absl::StatusOr<EngineParts> LoadParts(const EngineOptions& options) {
  namespace fs = std::filesystem;
  const fs::path dir(options.model_dir);
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("model directory '", options.model_dir, "' does not exist"));
  }
  const auto start = EngineClock::now();
  EngineParts parts;
  auto config = LoadModelConfig((dir / "config.json").string());
  if (!config.ok()) return config.status();
  parts.config = *std::move(config);
  auto formats = kv::FormatCatalogue::Create(FormatDefaultsOf(options), parts.config.head_dim);
  if (!formats.ok()) return formats.status();
  parts.formats = std::make_unique<kv::FormatCatalogue>(*std::move(formats));
  auto tokenizer = Tokenizer::FromFile((dir / "tokenizer.json").string());
  if (!tokenizer.ok()) return tokenizer.status();
  parts.tokenizer = *std::move(tokenizer);
  if (parts.tokenizer->vocab_size() > parts.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json has ", parts.tokenizer->vocab_size(),
                                                   " tokens but the model's vocab_size is ", parts.config.vocab_size));
  }
  auto checkpoint = CheckpointReader::Open(options.model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  parts.checkpoint = *std::move(checkpoint);
  log::Info(absl::StrFormat("loading %s (%d layers, hidden %d) onto %s", options.model_dir,
                            parts.config.num_hidden_layers, parts.config.hidden_size, options.device));
  ModelLoadOptions load;
  load.device = options.device;
  load.dtype = options.dtype;
  load.max_positions = MaxModelLen(options, parts.config);  // RoPE rows: every position a request can reach
  auto model = LlamaModel::Load(*parts.checkpoint, parts.config, load);
  if (!model.ok()) return model.status();
  parts.model = *std::move(model);
  log::Info(absl::StrFormat("model loaded in %.2f s: %.1f MiB of weights as %s", SecondsSince(start),
                            MiB(parts.model->weight_bytes()), parts.model->dtype_name()));
  absl::StatusOr<int64_t> pool_bytes = KvPoolBytes(options, *parts.model);
  if (!pool_bytes.ok()) return pool_bytes.status();
  const kv::KvFormat& default_format = parts.formats->default_format();
  auto kv_manager = kv::KvCacheManager::Create(parts.model->kv_shape(), default_format, *pool_bytes);
  if (!kv_manager.ok()) return kv_manager.status();
  parts.kv = *std::move(kv_manager);
  const kv::PoolStats pool = parts.kv->stats();
  log::Info(absl::StrFormat("KV pool: %.1f MiB in %d pages of %d bytes; default format %s", MiB(pool.total_bytes()),
                            pool.total_pages, pool.page_bytes, kv::KvFormatLabel(default_format)));
  auto runner = StepRunner::Create(*parts.model, *parts.kv, options.max_num_batched_tokens, options.max_num_seqs);
  if (!runner.ok()) return runner.status();
  parts.runner = *std::move(runner);
  log::Info(absl::StrFormat("attention backend: %s", parts.kv->backend().name()));
  parts.eos_ids = LoadEosTokenIds(options.model_dir, parts.config);
  return parts;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  if (absl::Status valid = ValidateEngineOptions(options); !valid.ok()) return valid;
  absl::StatusOr<EngineParts> parts = LoadParts(options);
  if (!parts.ok()) return parts.status();
  return std::unique_ptr<Engine>(new EngineImpl(options, *std::move(parts)));
}

}  // namespace squat
