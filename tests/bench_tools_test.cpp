// The GPU benchmark tooling (tools/bench/), exercised on CPU with the tiny checkpoint:
// squat-throughput's counts and memory figures, its sweep arithmetic (against a small
// simulation of the scheduler), floor.py against the floor computed here, and a CPU dry run of
// gpu_bench.sh's throughput stage.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "tests/process_test_support.h"
#include "tools/bench/throughput_plan.h"

namespace squat::bench {
namespace {

using nlohmann::json;
using testing_support::ExitCodeOf;
using testing_support::ReadFile;
using testing_support::Rng;
using testing_support::UniqueTempPath;

int64_t Uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(Rng()); }

// Runs a shell command with its output in a log file; the exit status.
int Shell(const std::string& command, const std::string& log) {
  return ExitCodeOf(std::system(absl::StrCat(command, " > ", log, " 2>&1").c_str()));
}

bool HavePython() { return std::system("python3 -c 'import json' > /dev/null 2>&1") == 0; }

json RunThroughput(const std::string& flags, int* exit_code) {
  const std::string out = UniqueTempPath("tp", "json");
  const std::string log = out + ".log";
  *exit_code = Shell(absl::StrCat(SQUAT_THROUGHPUT_BIN, " --model ", SQUAT_TINY_MODEL_DIR, " ", flags, " --json ", out),
                     log);
  if (*exit_code != 0) ADD_FAILURE() << ReadFile(log);
  json result = json::parse(ReadFile(out), nullptr, /*allow_exceptions=*/false);
  std::remove(out.c_str());
  std::remove(log.c_str());
  return result;
}

TEST(ThroughputToolTest, ReportsEveryTokenOfABatch) {
  const char* formats[] = {"fp16", "kivi-2", "squat-2", "squat-post-4"};
  const std::string format = formats[Uniform(0, 3)];
  const int64_t prompt = Uniform(8, 48), gen = Uniform(3, 12);
  int code = 0;
  const json r = RunThroughput(absl::StrCat("--format ", format, " --batches 2 --prompt-tokens ", prompt,
                                            " --gen-tokens ", gen, " --kv-pool-mib 64 --seed ", Uniform(1, 1000)),
                               &code);
  ASSERT_EQ(code, 0);
  ASSERT_TRUE(r.is_object());
  SCOPED_TRACE(r.dump(1));
  EXPECT_EQ(r["format"], format);
  EXPECT_GT(r["model"]["weight_bytes"].get<int64_t>(), 0);
  ASSERT_EQ(r["points"].size(), 1u);
  const json& p = r["points"][0];
  EXPECT_EQ(p["status"], "ok");
  EXPECT_EQ(p["batch"], 2);
  EXPECT_EQ(p["completed"], 2);
  EXPECT_EQ(p["errors"], 0);
  EXPECT_EQ(p["generated_tokens"], 2 * gen);
  EXPECT_EQ(p["prompt_tokens_total"], 2 * prompt);
  const double wall = p["wall_s"];
  ASSERT_GT(wall, 0);
  EXPECT_NEAR(p["throughput_tok_s"].get<double>(), 2.0 * (prompt + gen) / wall, 1e-6 * 2 * (prompt + gen) / wall);
  EXPECT_NEAR(p["gen_throughput_tok_s"].get<double>(), 2.0 * gen / wall, 1e-6 * 2 * gen / wall);
  EXPECT_LE(p["prefill_phase_s"].get<double>(), wall);
  // Each sequence's first token comes from its prefill step, every later one from its own step.
  EXPECT_GE(p["engine_steps"].get<int64_t>(), gen);
  EXPECT_EQ(p["observer"]["steps"], p["engine_steps"]);
  EXPECT_EQ(p["observer"]["prefill_steps"].get<int64_t>() + p["observer"]["decode_steps"].get<int64_t>(),
            p["engine_steps"].get<int64_t>());
  EXPECT_LE(p["steady_decode"]["steps"].get<int64_t>(), p["observer"]["decode_steps"].get<int64_t>());
  EXPECT_EQ(p["preemptions"], 0);
  const json& pool = p["kv_pool"];
  EXPECT_GT(pool["peak_used_pages"].get<int64_t>(), 0);
  EXPECT_LE(pool["peak_used_pages"].get<int64_t>(), pool["total_pages"].get<int64_t>());
  EXPECT_EQ(pool["peak_used_bytes"].get<int64_t>(),
            pool["peak_used_pages"].get<int64_t>() * pool["page_bytes"].get<int64_t>());
}

TEST(ThroughputToolTest, MaxBatchFillsThePoolAndCompletes) {
  const char* formats[] = {"fp16", "kivi-2", "squat-2"};
  const std::string format = formats[Uniform(0, 2)];
  const int64_t prompt = Uniform(8, 40), gen = Uniform(2, 8);
  int code = 0;
  const json r = RunThroughput(absl::StrCat("--format ", format, " --batches max --prompt-tokens ", prompt,
                                            " --gen-tokens ", gen, " --kv-pool-mib 3"),
                               &code);
  ASSERT_EQ(code, 0);
  SCOPED_TRACE(r.dump(1));
  ASSERT_EQ(r["points"].size(), 1u);
  const json& p = r["points"][0];
  const int64_t batch = p["batch"];
  EXPECT_EQ(p["status"], "ok");
  EXPECT_EQ(p["completed"], batch);
  EXPECT_EQ(p["generated_tokens"], batch * gen);
  // Not more sequences than GetModelInfo's capacity allows, and enough to fill most of the pool.
  for (const json& c : r["capacity"]) {
    if (c["is_default"]) {
      EXPECT_LE(batch, c["capacity_tokens"].get<int64_t>() / StoredTokens(prompt, gen));
    }
  }
  EXPECT_GE(p["kv_pool"]["peak_used_pages"].get<double>(), 0.8 * p["kv_pool"]["total_pages"].get<double>());
}

TEST(ThroughputToolTest, DescribeOnlyGivesTheCapacityTable) {
  const int64_t context = Uniform(100, 5000);
  int code = 0;
  const json r = RunThroughput(absl::StrCat("--describe-only --format squat-2 --kv-pool-mib 16 --capacity-contexts ", context),
                               &code);
  ASSERT_EQ(code, 0);
  SCOPED_TRACE(r.dump(1));
  EXPECT_TRUE(r["points"].empty());
  ASSERT_FALSE(r["capacity"].empty());
  EXPECT_EQ(r["capacity"].size(), r["kv_formats"].size());
  int defaults = 0;
  for (const json& c : r["capacity"]) {
    EXPECT_EQ(c["context"], context);
    EXPECT_EQ(c["max_sequences_naive"], c["capacity_tokens"].get<int64_t>() / context);
    if (c["is_default"]) {
      ++defaults;
      EXPECT_EQ(c["format"], "squat-2");
      EXPECT_LE(c["max_sequences_estimate"].get<int64_t>(), c["max_sequences_naive"].get<int64_t>());
    }
  }
  EXPECT_EQ(defaults, 1);
}

TEST(ThroughputToolTest, UsageErrorsExitTwo) {
  const std::string log = UniqueTempPath("tp", "log");
  EXPECT_EQ(Shell(absl::StrCat(SQUAT_THROUGHPUT_BIN, " --batches 2"), log), 2);  // no --model
  EXPECT_EQ(Shell(absl::StrCat(SQUAT_THROUGHPUT_BIN, " --model x --batches 2 --format squat"), log), 2);
  EXPECT_EQ(Shell(absl::StrCat(SQUAT_THROUGHPUT_BIN, " --model x --batches 0"), log), 2);
  EXPECT_EQ(Shell(absl::StrCat(SQUAT_THROUGHPUT_BIN, " --model x --batches 2 --bogus"), log), 2);
  std::remove(log.c_str());
}

// The scheduler's prompt phase, simulated: running sequences first (one row each once decoding,
// else their next chunk), then waiting ones, within the step's row budget.
int64_t SimulatedPrefillSteps(int64_t batch, int64_t prompt, const StepLimits& limits) {
  std::vector<int64_t> fed(batch, 0);
  int64_t steps = 0, done = 0;
  while (done < batch) {
    ++steps;
    int64_t budget = limits.max_batched_tokens;
    for (int64_t i = 0; i < batch && budget > 0; ++i) {
      if (fed[i] >= prompt) {
        --budget;  // a decode row
        continue;
      }
      const int64_t rows = std::min({prompt - fed[i], limits.max_prefill_chunk, budget});
      fed[i] += rows;
      budget -= rows;
      if (fed[i] == prompt) ++done;
    }
  }
  return steps;
}

TEST(BenchPlanTest, PrefillStepsBoundTheScheduler) {
  for (int trial = 0; trial < 200; ++trial) {
    const StepLimits limits{Uniform(64, 4096), Uniform(16, 1024)};
    const int64_t batch = Uniform(1, 40), prompt = Uniform(1, 3000);
    if (limits.max_batched_tokens <= batch) continue;
    const int64_t simulated = SimulatedPrefillSteps(batch, prompt, limits);
    EXPECT_GE(PrefillSteps(batch, prompt, limits), simulated)
        << "batch " << batch << " prompt " << prompt << " limits " << limits.max_batched_tokens << "/"
        << limits.max_prefill_chunk;
    const int64_t window = Uniform(1, 50), gen = Uniform(1, 20);
    const int64_t tokens = GenTokensFor(batch, prompt, gen, window, limits, 0);
    EXPECT_GE(tokens, gen);
    EXPECT_GE(tokens, simulated + window);
    EXPECT_EQ(GenTokensFor(batch, prompt, gen, 0, limits, 0), gen);
    EXPECT_LE(GenTokensFor(batch, prompt, gen, window, limits, prompt + 5), 5);
  }
}

TEST(BenchPlanTest, MaxSequencesFitThePool) {
  for (int trial = 0; trial < 500; ++trial) {
    // A pool paged like the engine's: tokens_per_page slots a page, and each sequence holds whole
    // pages for its tokens plus fixed_pages (residual window, state).
    const int64_t tokens_per_page = Uniform(1, 256), page_bytes = tokens_per_page * Uniform(1, 4096);
    const double bytes_per_token = static_cast<double>(page_bytes) / tokens_per_page;
    const int64_t total_pages = Uniform(1, 200000), fixed_pages = Uniform(0, 8);
    if (total_pages <= fixed_pages) continue;
    const FormatCapacity format{bytes_per_token, (total_pages - fixed_pages) * tokens_per_page};
    const int64_t length = Uniform(1, 40000);
    const int64_t n = EstimateMaxSequences(format, page_bytes, total_pages, length);
    if (format.capacity_tokens < length) {
      EXPECT_EQ(n, 0);
      continue;
    }
    const int64_t per_sequence = (length + tokens_per_page - 1) / tokens_per_page + fixed_pages;
    EXPECT_LE(n * per_sequence, total_pages) << "n " << n;            // they fit
    EXPECT_GT((n + 1) * per_sequence, 0.98 * total_pages) << "n " << n;  // one more would leave < 2 %
    EXPECT_LE(n, NaiveMaxSequences(format, length));
  }
}

TEST(BenchPlanTest, PredictionReproducesItsObservationAndGrowsWithTheBatch) {
  const PointObservation seen{16, 512, 40, 2.0, 0.02};
  const CostModel model{int64_t{13} << 30, 65536};
  EXPECT_NEAR(PredictPointSeconds(seen, model, 16, 512, 40), 1.25 * (2.0 + 40 * 0.02) + 1.0, 1e-9);
  double previous = 0;
  for (int64_t batch : {1, 8, 16, 64, 256}) {
    const double t = PredictPointSeconds(seen, model, batch, 512, 40);
    EXPECT_GT(t, previous);
    previous = t;
  }
  EXPECT_GT(PredictPointSeconds(seen, model, 16, 4096, 40), PredictPointSeconds(seen, model, 16, 512, 40));
}

TEST(FloorScriptTest, SingleModeMatchesTheFormula) {
  if (!HavePython()) GTEST_SKIP() << "python3 not installed";
  const int64_t layers = Uniform(2, 40), heads = 4 * Uniform(1, 16), kv_heads = heads / 4 * Uniform(1, 4);
  const int64_t head_dim = 64 * Uniform(1, 2), hidden = heads * head_dim, inter = 128 * Uniform(4, 100);
  const int64_t vocab = Uniform(1000, 150000), batch = Uniform(1, 512), context = Uniform(1, 40000);
  const double bandwidth = 1e12 * Uniform(1, 5), peak = 1e14 * Uniform(1, 10), kv = Uniform(1000, 600000);
  const std::string dir = UniqueTempPath("floor", "dir");
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  std::ofstream(dir + "/config.json") << json{{"hidden_size", hidden},       {"num_attention_heads", heads},
                                              {"num_key_value_heads", kv_heads}, {"head_dim", head_dim},
                                              {"num_hidden_layers", layers},  {"intermediate_size", inter},
                                              {"vocab_size", vocab},          {"torch_dtype", "float16"}}
                                            .dump();
  const std::string out = dir + "/floor.json";
  const int code = Shell(absl::StrCat("python3 ", SQUAT_SOURCE_DIR, "/tools/bench/floor.py --config ", dir,
                                      "/config.json --bandwidth ", bandwidth, " --peak-flops ", peak,
                                      " --kv-bytes-per-token ", kv, " --batch ", batch, " --context ", context,
                                      " --json ", out),
                         dir + "/log");
  ASSERT_EQ(code, 0) << ReadFile(dir + "/log");
  const json row = json::parse(ReadFile(out))["rows"][0];
  // Every linear layer and lm_head once, norms, the batch's embedding rows; KV of every sequence.
  const double linear = static_cast<double>(layers) * (2.0 * hidden * heads * head_dim +
                                                       2.0 * hidden * kv_heads * head_dim + 3.0 * hidden * inter) +
                        static_cast<double>(vocab) * hidden;
  const double weight_bytes = 2.0 * (linear + layers * 2.0 * hidden + hidden + batch * static_cast<double>(hidden));
  const double kv_bytes = static_cast<double>(batch) * context * kv;
  const double flops = 2.0 * linear * batch + 4.0 * layers * heads * head_dim * static_cast<double>(context) * batch;
  const double expected = std::max((weight_bytes + kv_bytes) / bandwidth, flops / peak);
  EXPECT_NEAR(row["floor_s"].get<double>(), expected, 1e-9 * expected);
  EXPECT_EQ(row["bound"], (weight_bytes + kv_bytes) / bandwidth >= flops / peak ? "memory" : "compute");
  std::system(("rm -rf " + dir).c_str());
}

TEST(GpuBenchScriptTest, CpuDryRunWritesTheThroughputSummary) {
  if (!HavePython()) GTEST_SKIP() << "python3 not installed";
  const std::string work = UniqueTempPath("gpu_bench", "work"), out = UniqueTempPath("gpu_bench", "out");
  const int code = Shell(absl::StrCat("cd ", SQUAT_SOURCE_DIR, " && SQUAT_BENCH_BUILD=", SQUAT_BINARY_DIR,
                                      " SQUAT_BENCH_WORK=", work, " bash tools/bench/gpu_bench.sh --cpu ", out,
                                      " checkpoints tp7b"),
                         out + ".log");
  ASSERT_EQ(code, 0) << ReadFile(out + ".log");
  const json summary = json::parse(ReadFile(out + "/summary.json"), nullptr, false);
  ASSERT_TRUE(summary.is_object()) << ReadFile(out + "/bench.log");
  SCOPED_TRACE(ReadFile(out + "/bench.log"));
  for (const char* format : {"fp16", "kivi-2", "squat-2"}) {
    const json& run = summary["throughput_7b"][format];
    ASSERT_TRUE(run.contains("points")) << format;
    ASSERT_FALSE(run["points"].empty()) << format;
    for (const json& p : run["points"]) {
      EXPECT_EQ(p["status"], "ok") << format;
      EXPECT_EQ(p["completed"], p["batch"]) << format;
    }
  }
  const std::string md = ReadFile(out + "/summary.md");
  EXPECT_NE(md.find("## (a) Throughput"), std::string::npos);
  EXPECT_NE(md.find("squat-throughput --model"), std::string::npos);  // the exact commands
  std::ifstream raw(out + "/raw.tar.gz");
  EXPECT_TRUE(raw.good());
  std::system(("rm -rf " + work + " " + out + " " + out + ".log").c_str());
}

}  // namespace
}  // namespace squat::bench
