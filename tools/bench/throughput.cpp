// squat-throughput: offline throughput and decode step times of the engine (no server, no gRPC),
// for the GPU benchmarks of docs/benchmarks.md. One engine, one KV format per process; sweeps
// prompt lengths x batch sizes within a time budget and writes JSON after every point.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/engine.h"
#include "tools/bench/gpu_memory.h"
#include "tools/bench/throughput_options.h"
#include "tools/bench/throughput_plan.h"
#include "tools/bench/throughput_point.h"

namespace squat::bench {
namespace {

using Json = nlohmann::ordered_json;
using namespace std::chrono_literals;

// Engine options that other work adds over time: set/read them only where this build has them.
template <typename T, typename = void>
struct HasGpuMemoryUtilization : std::false_type {};
template <typename T>
struct HasGpuMemoryUtilization<T, std::void_t<decltype(std::declval<T&>().gpu_memory_utilization)>>
    : std::true_type {};
template <typename T, typename = void>
struct HasWorkspaceBytes : std::false_type {};
template <typename T>
struct HasWorkspaceBytes<T, std::void_t<decltype(std::declval<T&>().workspace_bytes)>> : std::true_type {};

template <typename Options>
void SetGpuMemoryUtilization(Options& options, double share) {
  if constexpr (HasGpuMemoryUtilization<Options>::value) options.gpu_memory_utilization = share;
}

template <typename Description>
int64_t WorkspaceBytes(const Description& description) {
  if constexpr (HasWorkspaceBytes<Description>::value) {
    return description.workspace_bytes;
  } else {
    return -1;
  }
}

// --max-num-seqs when the batch list has "max" and the flag is not given.
constexpr int64_t kDefaultMaxSeqs = 2048;

constexpr bool kHasGpuMemoryUtilization = HasGpuMemoryUtilization<EngineOptions>::value;

Json CapabilitiesJson() {
  return Json{{"gpu_memory_utilization", kHasGpuMemoryUtilization},
              {"workspace_bytes", HasWorkspaceBytes<ModelDescription>::value},
              {"step_observer", true}};
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Json GpuJson(const GpuMemorySample& s) {
  if (!s.available) return nullptr;
  return Json{{"process_mib", s.process_mib >= 0 ? Json(s.process_mib) : Json(nullptr)},
              {"card_used_mib", s.used_mib},
              {"card_total_mib", s.total_mib},
              {"compute_apps", s.compute_apps}};
}

Json OptionsJson(const ThroughputOptions& o) {
  Json batches = Json::array();
  for (const BatchChoice& b : o.batches) batches.push_back(b.max ? Json("max") : Json(b.count));
  return Json{{"model", o.model_dir},
              {"device", o.device},
              {"dtype", o.dtype},
              {"format", o.format.name},
              {"kv_pool_mib", o.kv_pool_mib},
              {"gpu_memory_utilization", o.gpu_memory_utilization},
              {"max_num_batched_tokens", o.max_num_batched_tokens},
              {"max_prefill_chunk", o.max_prefill_chunk},
              {"batches", batches},
              {"prompt_tokens", o.prompt_tokens},
              {"gen_tokens", o.gen_tokens},
              {"steady_window", o.steady_window},
              {"seed", o.seed},
              {"budget_s", o.budget_s},
              {"fill_budget", o.fill_budget}};
}

// The pool entry of the engine's default format (the one this process measures).
const KvFormatDescription* DefaultFormat(const ModelDescription& d) {
  for (const KvFormatDescription& f : d.kv_formats) {
    if (f.is_default) return &f;
  }
  return nullptr;
}

std::string FormatLabel(const KvFormatDescription& f) {
  if (f.method == "fp16") return "fp16";
  if (f.k_bits == f.v_bits) return absl::StrCat(f.method, "-", f.k_bits);
  return absl::StrCat(f.method, "-k", f.k_bits, "v", f.v_bits);
}

Json CapacityJson(const ModelDescription& d, const KvPoolUsage& pool, const std::vector<int64_t>& contexts) {
  Json table = Json::array();
  for (const KvFormatDescription& f : d.kv_formats) {
    const FormatCapacity cap{f.bytes_per_token, static_cast<int64_t>(f.capacity_tokens)};
    for (int64_t context : contexts) {
      table.push_back(Json{{"format", FormatLabel(f)},
                           {"is_default", f.is_default},
                           {"context", context},
                           {"bytes_per_token", f.bytes_per_token},
                           {"capacity_tokens", f.capacity_tokens},
                           {"max_sequences_naive", NaiveMaxSequences(cap, context)},
                           // Only the default format's pages are sized for it; the others' pool
                           // remainder is page waste, not a per-sequence cost.
                           {"max_sequences_estimate",
                            f.is_default ? Json(EstimateMaxSequences(cap, pool.page_bytes, pool.total_pages, context))
                                         : Json(nullptr)}});
    }
  }
  return table;
}

Json PointJson(const PointResult& r, double predicted_s, bool fitted, const GpuMemorySample& gpu) {
  const double wall = std::max(r.wall_seconds, 1e-9);
  const double decode_phase = std::max(0.0, r.wall_seconds - r.all_first_token_seconds);
  auto ms = [](double s) { return s > 0 ? Json(s * 1e3) : Json(nullptr); };
  return Json{
      {"status", r.status},
      {"message", r.message},
      {"batch", r.batch},
      {"prompt_tokens", r.prompt_tokens},
      {"gen_tokens", r.gen_tokens},
      {"predicted_s", predicted_s > 0 ? Json(predicted_s) : Json(nullptr)},
      {"fitted_to_budget", fitted},
      {"completed", r.completed},
      {"errors", r.errors},
      {"prompt_tokens_total", r.prompt_tokens_total},
      {"generated_tokens", r.generated_tokens},
      {"wall_s", r.wall_seconds},
      // (prompt + generated) tokens / wall time: the convention of the HF baseline in the
      // shared README; and generated tokens / wall time.
      {"throughput_tok_s", (r.prompt_tokens_total + r.generated_tokens) / wall},
      {"gen_throughput_tok_s", r.generated_tokens / wall},
      {"prefill_phase_s", r.all_first_token_seconds},
      {"decode_phase_s", decode_phase},
      {"ttft_s", Json{{"p50", r.ttft.p50}, {"mean", r.ttft.mean}, {"max", r.ttft.max}}},
      {"engine_steps", r.engine_steps},
      {"preemptions", r.preemptions},
      {"steady_decode",
       Json{{"steps", r.steady.steps},
            {"mean_step_ms", ms(r.steady.mean_step_seconds)},
            {"p50_step_ms", ms(r.steady.p50_step_seconds)},
            {"mean_context", r.steady.mean_context}}},
      {"window_decode",
       Json{{"gaps", r.window_gaps}, {"mean_step_ms", ms(r.window_step_seconds)}, {"mean_context", r.window_mean_context}}},
      {"tail_step_ms", ms(r.tail_step_seconds)},
      {"observer",
       Json{{"steps", r.observed_steps},
            {"prefill_steps", r.prefill_steps},
            {"prefill_steps_s", r.prefill_step_seconds_total},
            {"decode_steps", r.decode_steps},
            {"decode_steps_s", r.decode_step_seconds_total}}},
      {"kv_pool",
       Json{{"page_bytes", r.page_bytes},
            {"total_pages", r.total_pages},
            {"peak_used_pages", r.peak_used_pages},
            {"peak_used_bytes", r.peak_used_pages * r.page_bytes}}},
      {"gpu_memory", GpuJson(gpu)},
  };
}

// The step time to quote for a point: steady full-batch decode steps, else the token window,
// else the tail estimate.
double BestStepSeconds(const PointResult& r) {
  if (r.steady.steps > 0) return r.steady.mean_step_seconds;
  if (r.window_gaps > 0) return r.window_step_seconds;
  return r.tail_step_seconds;
}

class JsonFile {
 public:
  explicit JsonFile(std::string path) : path_(std::move(path)) {}
  void Write(const Json& json) const {
    if (path_.empty() || path_ == "-") return;
    const std::string tmp = path_ + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << json.dump(2) << "\n";
    }
    std::rename(tmp.c_str(), path_.c_str());
  }
  void Final(const Json& json) const {
    if (path_ == "-") {
      std::printf("%s\n", json.dump(2).c_str());
    } else {
      Write(json);
    }
  }

 private:
  std::string path_;
};

void Warmup(Engine& engine, const ModelDescription& d) {
  GenerateRequest r;
  r.request_id = "tp-warmup";
  for (int i = 0; i < 16; ++i) r.prompt_token_ids.push_back(static_cast<int32_t>((i * 7919) % d.vocab_size));
  r.sampling.max_tokens = 4;
  r.sampling.temperature = 0;
  r.sampling.ignore_eos = true;
  auto stream = engine.Submit(std::move(r));
  if (!stream.ok()) return;
  GenerationEvent event;
  while ((*stream)->Next(&event, 600s) && !event.finished) {
  }
  engine.WaitIdle(30s);
}

int Run(const ThroughputOptions& o) {
  const Clock::time_point process_start = Clock::now();
  const bool budgeted = o.budget_s > 0;
  const Clock::time_point budget_end =
      process_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.budget_s));
  const JsonFile file(o.json_path);
  Json out{{"tool", "squat-throughput"}, {"label", o.label}, {"options", OptionsJson(o)},
           {"capabilities", CapabilitiesJson()}};

  if (o.gpu_memory_utilization > 0 && !kHasGpuMemoryUtilization) {
    std::fprintf(stderr, "squat-throughput: this build's engine has no gpu_memory_utilization option\n");
    return 2;
  }
  // Every request of a point is submitted at once: all of them may run and wait together.
  int64_t max_num_seqs = o.max_num_seqs;
  if (max_num_seqs == 0) {
    for (const BatchChoice& b : o.batches) max_num_seqs = std::max(max_num_seqs, b.max ? kDefaultMaxSeqs : b.count);
  }
  max_num_seqs = std::max<int64_t>(1, max_num_seqs);
  StepLimits limits;
  EngineOptions engine_options;
  if (o.max_num_batched_tokens > 0) engine_options.max_num_batched_tokens = o.max_num_batched_tokens;
  if (o.max_prefill_chunk > 0) engine_options.max_prefill_chunk = o.max_prefill_chunk;
  limits.max_batched_tokens = engine_options.max_num_batched_tokens;
  limits.max_prefill_chunk = engine_options.max_prefill_chunk;
  StepRecorder recorder;
  engine_options.model_dir = o.model_dir;
  engine_options.device = o.device;
  engine_options.dtype = o.dtype;
  engine_options.kv_format = o.format.method;
  if (o.format.k_bits > 0) {
    engine_options.kv_k_bits = o.format.k_bits;
    engine_options.kv_v_bits = o.format.v_bits;
  }
  if (o.kv_pool_mib > 0) engine_options.kv_pool_bytes = o.kv_pool_mib << 20;
  if (o.gpu_memory_utilization > 0) SetGpuMemoryUtilization(engine_options, o.gpu_memory_utilization);
  engine_options.max_model_len = o.max_model_len;
  engine_options.max_num_seqs = static_cast<int32_t>(max_num_seqs);
  engine_options.max_waiting = static_cast<int32_t>(max_num_seqs + 16);
  engine_options.max_tokens_limit = 1 << 24;  // the sweep decides the lengths
  engine_options.observer = &recorder;

  auto engine = Engine::Create(engine_options);
  const double load_seconds = SecondsSince(process_start);
  if (!engine.ok()) {
    out["error"] = engine.status().ToString();
    file.Final(out);
    std::fprintf(stderr, "squat-throughput: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const ModelDescription d = (*engine)->Describe();
  const KvPoolUsage pool = (*engine)->PoolUsage();
  const int64_t pool_bytes = pool.page_bytes * pool.total_pages;
  const KvFormatDescription* measured = DefaultFormat(d);
  Json formats = Json::array();
  for (const KvFormatDescription& f : d.kv_formats) {
    formats.push_back(Json{{"format", FormatLabel(f)},
                           {"method", f.method},
                           {"k_bits", f.k_bits},
                           {"v_bits", f.v_bits},
                           {"bytes_per_token", f.bytes_per_token},
                           {"capacity_tokens", f.capacity_tokens},
                           {"is_default", f.is_default}});
  }
  out["model"] = Json{{"name", d.model_name},       {"architecture", d.architecture},
                      {"dtype", d.dtype},           {"device", d.device},
                      {"vocab_size", d.vocab_size}, {"hidden_size", d.hidden_size},
                      {"num_layers", d.num_layers}, {"num_attention_heads", d.num_attention_heads},
                      {"num_key_value_heads", d.num_key_value_heads}, {"head_dim", d.head_dim},
                      {"max_model_len", d.max_model_len}, {"weight_bytes", d.weight_bytes},
                      {"workspace_bytes", WorkspaceBytes(d)}};
  out["format"] = measured ? Json(FormatLabel(*measured)) : Json(o.format.name);
  out["kv_formats"] = formats;
  out["kv_pool"] = Json{{"page_bytes", pool.page_bytes}, {"total_pages", pool.total_pages}, {"total_bytes", pool_bytes}};
  out["load_s"] = load_seconds;
  out["gpu_memory_after_load"] = GpuJson(QueryGpuMemory(o.device));
  std::vector<int64_t> contexts = o.capacity_contexts;
  if (contexts.empty()) {
    for (int64_t p : o.prompt_tokens) contexts.push_back(p + o.gen_tokens);
  }
  out["capacity"] = CapacityJson(d, pool, contexts);
  out["points"] = Json::array();
  std::fprintf(stderr, "squat-throughput: %s on %s (%s), format %s, pool %.1f MiB, loaded in %.1f s\n",
               d.model_name.c_str(), d.device.c_str(), d.dtype.c_str(), out["format"].get<std::string>().c_str(),
               pool_bytes / 1048576.0, load_seconds);
  if (o.describe_only || measured == nullptr) {
    if (measured == nullptr) out["error"] = "the engine lists no default KV format";
    (*engine)->Shutdown();
    file.Final(out);
    return measured == nullptr ? 1 : 0;
  }
  file.Write(out);

  if (o.warmup) Warmup(**engine, d);
  const FormatCapacity capacity{measured->bytes_per_token, static_cast<int64_t>(measured->capacity_tokens)};
  const CostModel cost{d.weight_bytes, measured->bytes_per_token};
  std::optional<PointObservation> seen;
  std::string stop_reason = "done";
  const int64_t model_len = d.max_model_len;

  for (size_t pi = 0; pi < o.prompt_tokens.size() && stop_reason == "done"; ++pi) {
    const int64_t prompt = o.prompt_tokens[pi];
    const Clock::time_point share_start = Clock::now();
    const Clock::duration share = budgeted ? (budget_end - share_start) / static_cast<int64_t>(o.prompt_tokens.size() - pi)
                                           : Clock::duration::zero();
    const Clock::time_point share_end = share_start + share;
    const Clock::time_point cancel_at = std::min(budget_end, share_end + share / 4);
    int64_t previous_batch = 0;
    for (const BatchChoice& choice : o.batches) {
      int64_t batch = choice.count;
      if (choice.max) {
        // gen depends on the batch (steady window), the batch on the sequence length: settle twice.
        batch = EstimateMaxSequences(capacity, pool.page_bytes, pool.total_pages, StoredTokens(prompt, o.gen_tokens));
        for (int i = 0; i < 2; ++i) {
          const int64_t gen = GenTokensFor(batch, prompt, o.gen_tokens, o.steady_window, limits, model_len);
          batch = EstimateMaxSequences(capacity, pool.page_bytes, pool.total_pages, StoredTokens(prompt, gen));
        }
        batch = std::min(batch, max_num_seqs);
      }
      Json skipped{{"status", "skipped"}, {"batch", batch}, {"prompt_tokens", prompt}};
      if (batch > max_num_seqs) {
        skipped["message"] = absl::StrCat("more than --max-num-seqs ", max_num_seqs);
        out["points"].push_back(skipped);
        break;
      }
      if (batch <= previous_batch) continue;
      if (batch <= 0) {
        skipped["message"] = "the pool holds no sequence of this length";
        out["points"].push_back(skipped);
        break;
      }
      int64_t gen = GenTokensFor(batch, prompt, o.gen_tokens, o.steady_window, limits, model_len);
      if (prompt + gen > model_len) {
        skipped["message"] = absl::StrCat("prompt + generated tokens exceed max_model_len ", model_len);
        out["points"].push_back(skipped);
        break;
      }
      double predicted = 0;
      bool fitted = false;
      if (budgeted && seen.has_value()) {
        const double remaining = std::chrono::duration<double>(share_end - Clock::now()).count();
        predicted = PredictPointSeconds(*seen, cost, batch, prompt, gen);
        if (predicted > remaining) {
          int64_t lo = previous_batch, hi = batch;  // largest batch in (lo, hi) that fits
          while (o.fill_budget && hi - lo > 1) {
            const int64_t mid = lo + (hi - lo) / 2;
            const int64_t mid_gen = GenTokensFor(mid, prompt, o.gen_tokens, o.steady_window, limits, model_len);
            if (PredictPointSeconds(*seen, cost, mid, prompt, mid_gen) <= remaining) {
              lo = mid;
            } else {
              hi = mid;
            }
          }
          if (o.fill_budget && lo > previous_batch && lo >= previous_batch * 5 / 4 && lo > 0) {
            batch = lo;
            gen = GenTokensFor(batch, prompt, o.gen_tokens, o.steady_window, limits, model_len);
            predicted = PredictPointSeconds(*seen, cost, batch, prompt, gen);
            fitted = true;
          } else {
            skipped["predicted_s"] = predicted;
            skipped["message"] = absl::StrFormat("predicted %.0f s, %.0f s left in the budget", predicted, remaining);
            out["points"].push_back(skipped);
            std::fprintf(stderr, "squat-throughput: P=%lld B=%lld skipped: %s\n", static_cast<long long>(prompt),
                         static_cast<long long>(batch), skipped["message"].get<std::string>().c_str());
            break;
          }
        }
      }
      if (budgeted && Clock::now() >= cancel_at) {
        skipped["message"] = "no time left in the budget";
        out["points"].push_back(skipped);
        break;
      }
      PointSpec spec;
      spec.batch = batch;
      spec.prompt_tokens = prompt;
      spec.gen_tokens = gen;
      spec.seed = o.seed;
      spec.vocab_size = static_cast<int32_t>(d.vocab_size);
      spec.excluded_ids = d.eos_token_ids;
      if (budgeted) spec.cancel_after_seconds = std::max(1.0, std::chrono::duration<double>(cancel_at - Clock::now()).count());
      const PointResult r = RunPoint(**engine, recorder, spec);
      const GpuMemorySample gpu = QueryGpuMemory(o.device);
      out["points"].push_back(PointJson(r, predicted, fitted, gpu));
      file.Write(out);
      const double wall = std::max(r.wall_seconds, 1e-9);
      std::fprintf(stderr,
                   "squat-throughput: %s P=%lld B=%lld gen=%lld: %s, %.2f s (prefill phase %.2f s), %.0f tok/s "
                   "(%.0f generated/s), step %.2f ms, preemptions %lld, pool peak %.1f%%\n",
                   out["format"].get<std::string>().c_str(), static_cast<long long>(prompt),
                   static_cast<long long>(batch), static_cast<long long>(gen), r.status.c_str(), r.wall_seconds,
                   r.all_first_token_seconds, (r.prompt_tokens_total + r.generated_tokens) / wall,
                   r.generated_tokens / wall, BestStepSeconds(r) * 1e3, static_cast<long long>(r.preemptions),
                   100.0 * r.peak_used_pages / std::max<int64_t>(1, r.total_pages));
      if (r.status != "ok") {
        stop_reason = absl::StrCat("point P=", prompt, " B=", batch, ": ", r.status, ": ", r.message);
        break;
      }
      if (r.preemptions > o.max_preemption_ratio * batch) {
        // Larger batches only preempt more; the next prompt length gets its own sweep.
        out["points"].back()["status"] = "preemption_heavy";
        break;
      }
      seen = PointObservation{batch, prompt, gen, r.all_first_token_seconds, BestStepSeconds(r)};
      previous_batch = batch;
      if (fitted) break;  // larger entries cannot fit either
    }
  }
  out["stop_reason"] = stop_reason;
  out["total_s"] = SecondsSince(process_start);
  (*engine)->Shutdown();
  file.Final(out);
  return 0;
}

}  // namespace
}  // namespace squat::bench

int main(int argc, char** argv) {
  auto options = squat::bench::ParseThroughputArgs(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "squat-throughput: %s\nrun 'squat-throughput --help' for usage\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  if (options->help) {
    std::fputs(squat::bench::ThroughputUsage().c_str(), stdout);
    return 0;
  }
  if (options->capabilities) {
    std::printf("%s\n", squat::bench::CapabilitiesJson().dump().c_str());
    return 0;
  }
  return squat::bench::Run(*options);
}
