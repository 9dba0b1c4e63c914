// The runtime's public, torch-free API: the server and client-facing tools use only this.
// One engine thread owns the model and all device state; requests come in through Submit
// and results go out through a per-request RequestStream.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/sampling/sampler.h"

namespace squat {

// What one engine step (one batched forward pass) did; see EngineObserver.
struct StepInfo {
  bool prefill = false;          // the step fed at least one prompt chunk
  int32_t num_sequences = 0;     // sequences in the batch
  int64_t num_tokens = 0;        // rows fed: prompt-chunk tokens plus one per decoding sequence
  double duration_seconds = 0;   // planning, the forward pass, sampling and streaming
};

// Callbacks from the engine thread, for metrics. They must return quickly and must not call
// back into the engine. The observer is not owned and must outlive the engine.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepInfo& step) {}
  // Running sequences whose pages were reclaimed while planning a step (recomputed later).
  virtual void OnPreemptions(int64_t sequences) {}
};

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "auto";
  // Default KV-cache format: "squat" (pre-RoPE keys), "squat-post", "kivi" or "fp16" (full
  // precision in the model's dtype), with the spec's parameters (squat-spec.md section 1).
  std::string kv_format = "squat";
  int32_t kv_k_bits = 2;
  int32_t kv_v_bits = 2;
  int32_t kv_group_size = 32;       // G
  int32_t kv_residual_length = 32;  // R
  int32_t kv_block_size = 0;        // g; 0: head_dim / 2 (two channel blocks, e.g. 64 for d = 128)
  int32_t kv_subspace_dim = 60;     // r
  double kv_lambda = 1e-3;
  bool kv_shared_subspace = false;  // false: one subspace per request (from its own prompt)
  int64_t kv_pool_bytes = 0;        // KV page pool size (whole pages); 0: 1 GiB on CPU, see below on CUDA
  // CUDA with kv_pool_bytes 0: the KV pool takes this share of the device's total memory minus
  // what is in use once the weights are loaded (weights, CUDA context) and minus the activation
  // workspace for max_num_batched_tokens (ModelDescription::workspace_bytes).
  double gpu_memory_utilization = 0.9;
  int32_t max_model_len = 0;       // 0: the model's max_position_embeddings
  int32_t default_max_tokens = 256;
  int32_t max_tokens_limit = 4096;  // a request asking for more is rejected
  int32_t max_waiting = 256;        // queued requests beyond this: RESOURCE_EXHAUSTED
  int32_t max_prompt_tokens = 0;    // 0: max_model_len - 1
  // Continuous batching: each engine step feeds prompt chunks and one decode token per running
  // sequence through the model at once.
  int32_t max_num_seqs = 256;             // running sequences (holding KV pages) at most
  int32_t max_num_batched_tokens = 2048;  // tokens fed per step, prompt chunks and decodes together
  int32_t max_prefill_chunk = 512;        // prompt tokens one sequence feeds per step
  EngineObserver* observer = nullptr;     // not owned; null: none
};

// Ranges of the options that need no model (sizes > 0, 0 < gpu_memory_utilization <= 1,
// 1 <= default_max_tokens <= max_tokens_limit, ...); messages name the option and its server
// flag. Engine::Create calls it first; the server calls it while parsing flags. The KV format
// defaults are checked against the model's head_dim in Engine::Create (kvcache/format_catalogue.h).
absl::Status ValidateEngineOptions(const EngineOptions& options);

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);

struct GenerateRequest {
  std::string request_id;                // generated when empty
  std::string prompt;                    // used when prompt_token_ids is empty
  std::vector<int32_t> prompt_token_ids;
  bool add_special_tokens = true;
  SamplingParams sampling;
  std::string kv_method;                 // empty: the engine default
  int32_t k_bits = 0;                    // 0: the engine default
  int32_t v_bits = 0;
};

struct Timings {
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
};

// One message from the engine to a request's consumer. The last one has finished = true.
struct GenerationEvent {
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::string text;  // complete UTF-8 text that became available with these tokens
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error_message;  // set with kError
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  Timings timings;
  // Seconds from the request's arrival to when the engine produced this event (token events
  // and the final one), so consumers can measure inter-token latency without queueing delay.
  double time_seconds = 0;
};

// A new request id: "req-" and 16 hex digits. The engine gives one to a request without an
// id; the server uses it for calls it refuses before submitting.
std::string NewRequestId();

// What the engine decided for an accepted request: its defaults applied, its KV format
// resolved. Consumers read these instead of re-deriving the engine's defaults.
struct AcceptedRequest {
  std::string request_id;
  std::string kv_method;   // "fp16", "kivi", "squat" or "squat-post"
  std::string kv_format;   // the metrics label: "fp16" or "<method>-k<K>v<V>", e.g. "squat-k2v2"
  int32_t max_tokens = 0;  // the request's, or the engine's default_max_tokens
};

// Thread-safe queue between the engine thread (producer) and one consumer.
class RequestStream {
 public:
  explicit RequestStream(AcceptedRequest accepted) : accepted_(std::move(accepted)) {}
  const std::string& request_id() const { return accepted_.request_id; }
  const AcceptedRequest& accepted() const { return accepted_; }

  // Waits up to `timeout` for the next event; false on timeout.
  bool Next(GenerationEvent* event, std::chrono::milliseconds timeout);
  // Asks the engine to stop this request; its pages are freed at the next step and a
  // final event with kCancelled follows.
  void Cancel();
  bool cancel_requested() const;

  // Engine side.
  void Push(GenerationEvent event);

 private:
  const AcceptedRequest accepted_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  bool cancelled_ = false;
};

struct KvPoolUsage {
  int64_t page_bytes = 0;
  int64_t total_pages = 0;
  int64_t used_pages = 0;
};

// Scheduler counters (thread-safe snapshot).
struct EngineStats {
  int64_t steps = 0;        // batched forward passes run
  int64_t preemptions = 0;  // sequences whose pages were reclaimed (recomputed later)
  int64_t running = 0;      // sequences holding KV pages
  int64_t waiting = 0;      // accepted, not running (new or preempted)
};

struct KvFormatDescription {
  std::string label;  // AcceptedRequest::kv_format's name for it
  std::string method;
  int32_t k_bits = 16;
  int32_t v_bits = 16;
  double bytes_per_token = 0;  // all layers, keys + values
  uint64_t capacity_tokens = 0;
  bool is_default = false;
};

struct ModelDescription {
  std::string model_name;
  std::string model_dir;
  std::string architecture;
  int64_t vocab_size = 0, hidden_size = 0, num_layers = 0, num_attention_heads = 0;
  int64_t num_key_value_heads = 0, head_dim = 0, max_model_len = 0;
  std::string dtype;
  std::string device;
  std::vector<int32_t> eos_token_ids;
  int64_t weight_bytes = 0;
  // Activation workspace of one step (estimated from the shapes, RoPE table included): set
  // aside before the KV pool on CUDA, allocated as needed on CPU.
  int64_t workspace_bytes = 0;
  std::vector<KvFormatDescription> kv_formats;
};

// What serving options.model_dir with these options takes in memory, before anything is
// loaded: the weights in the dtype the loader will give them (LoadedWeightDtype, from the
// checkpoint's stored dtype), the KV pool as Engine::Create will allocate it (whole pages) and
// the activation workspace of one step (RoPE table included). With a named dtype only
// config.json is read; "auto" also reads the checkpoint's headers. On CUDA with kv_pool_bytes 0 the
// pool is sized from free memory at start-up and counts 0 here. Errors: the options', the
// config's and the checkpoint's (missing, corrupt), OUT_OF_RANGE for sizes beyond 2^62 bytes.
struct ServingMemoryEstimate {
  std::string weight_dtype;  // "float32", "float16" or "bfloat16"
  int64_t weight_bytes = 0;
  int64_t kv_pool_bytes = 0;
  int64_t workspace_bytes = 0;
  bool kv_pool_from_free_memory = false;  // CUDA with kv_pool_bytes 0
  int64_t total() const { return weight_bytes + kv_pool_bytes + workspace_bytes; }
};
absl::StatusOr<ServingMemoryEstimate> EstimateServingMemory(const EngineOptions& options);

class Engine {
 public:
  // Loads config, tokenizer and weights, and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;

  // Validates and queues a request. INVALID_ARGUMENT for bad input, RESOURCE_EXHAUSTED
  // when the queue is full, UNAVAILABLE once draining has begun.
  virtual absl::StatusOr<std::shared_ptr<RequestStream>> Submit(GenerateRequest request) = 0;
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text,
                                                        bool add_special_tokens) const = 0;
  virtual std::string TokenText(int32_t id) const = 0;  // the vocabulary entry of an id
  virtual ModelDescription Describe() const = 0;
  // Pages of the KV pool in use now (thread-safe snapshot).
  virtual KvPoolUsage PoolUsage() const = 0;
  virtual EngineStats Stats() const = 0;

  // Stops accepting new requests (Submit returns UNAVAILABLE from now on).
  virtual void StopAccepting() = 0;
  // Waits until no request is queued or running, up to `timeout`; true if idle.
  virtual bool WaitIdle(std::chrono::milliseconds timeout) = 0;
  // Cancels whatever is left and joins the engine thread.
  virtual void Shutdown() = 0;
};

}  // namespace squat
