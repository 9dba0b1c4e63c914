// squat-bench: load generator for squat-server (GenerateStream). Prints TTFT / inter-token /
// end-to-end latency percentiles, throughput and outcome counts; optionally writes JSON.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "client/bench_options.h"
#include "client/bench_report.h"
#include "client/bench_runner.h"
#include "client/bench_workload.h"
#include "squat/v1/generation.grpc.pb.h"

namespace {

using squat::bench::BenchOptions;

constexpr std::chrono::seconds kModelInfoTimeout(10);

std::string CodeName(const grpc::Status& status) {
  // gRPC and absl share the canonical code numbering.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
}

// The model facts the workload needs; also proves the server is there before the run
// (fails fast when nothing listens: wait for health first).
bool FetchModelInfo(const BenchOptions& options, squat::v1::ModelInfo* info) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      squat::client::CreateClientChannel(options.address, options.security);
  if (!channel.ok()) {
    std::fprintf(stderr, "squat-bench: %s\n", std::string(channel.status().message()).c_str());
    return false;
  }
  auto stub = squat::v1::GenerationService::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kModelInfoTimeout);
  const grpc::Status status = stub->GetModelInfo(&context, squat::v1::GetModelInfoRequest(), info);
  if (!status.ok()) {
    std::fprintf(stderr, "squat-bench: GetModelInfo at %s failed: %s: %s\n", options.address.c_str(),
                 CodeName(status).c_str(), status.error_message().c_str());
    return false;
  }
  return true;
}

bool WriteJson(const std::string& path, const nlohmann::json& json) {
  const std::string text = json.dump(2) + "\n";
  if (path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return true;
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    std::fprintf(stderr, "squat-bench: cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<BenchOptions> options = squat::bench::ParseBenchArgs(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "squat-bench: %s\nrun 'squat-bench --help' for usage\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  if (options->help) {
    std::fputs(squat::bench::BenchUsageText().c_str(), stdout);
    return 0;
  }

  squat::v1::ModelInfo info;
  if (!FetchModelInfo(*options, &info)) return 1;
  squat::bench::ModelFacts model;
  model.vocab_size = static_cast<int32_t>(info.vocab_size());
  model.eos_token_ids.assign(info.eos_token_ids().begin(), info.eos_token_ids().end());
  if (model.vocab_size <= static_cast<int32_t>(model.eos_token_ids.size())) {
    std::fprintf(stderr, "squat-bench: the server reports a vocabulary of %d tokens\n", model.vocab_size);
    return 1;
  }
  const int64_t longest = options->prompt_tokens.max + options->max_tokens.max;
  if (info.max_model_len() > 0 && longest > static_cast<int64_t>(info.max_model_len())) {
    std::fprintf(stderr,
                 "squat-bench: warning: prompt + max_tokens may reach %lld tokens; the model "
                 "holds %u (the server will reject or cut such requests)\n",
                 static_cast<long long>(longest), info.max_model_len());
  }

  const auto specs = squat::bench::MakeWorkload(*options, model);
  const squat::bench::RunResult run = squat::bench::RunWorkload(*options, specs);
  const squat::bench::Summary summary = squat::bench::Summarize(run);

  const bool json_to_stdout = options->json_path == "-";
  if (!options->quiet && !json_to_stdout) {
    std::printf("squat-bench: %s, %s on %s\n", info.model_name().c_str(), info.dtype().c_str(),
                info.device().c_str());
    std::fputs(squat::bench::FormatTable(summary).c_str(), stdout);
  }
  int shown = 0;
  for (const auto& record : run.records) {
    if (record.unexpected && shown++ < 5) {
      std::fprintf(stderr, "squat-bench: request %lld: %s: %s\n", static_cast<long long>(record.index),
                   record.outcome.c_str(), record.message.c_str());
    }
  }
  if (!options->json_path.empty()) {
    const nlohmann::json model_json = {{"model_name", info.model_name()},
                                       {"dtype", info.dtype()},
                                       {"device", info.device()},
                                       {"vocab_size", info.vocab_size()},
                                       {"max_model_len", info.max_model_len()}};
    if (!WriteJson(options->json_path, squat::bench::ToJson(*options, model_json, summary, run))) return 1;
  }
  if (summary.unexpected > 0 && !options->allow_errors) {
    std::fprintf(stderr, "squat-bench: %lld of %lld requests ended with unexpected errors\n",
                 static_cast<long long>(summary.unexpected), static_cast<long long>(summary.requests));
    return 1;
  }
  return 0;
}
