// squat-soak: a bounded soak of the real squat-server on loopback. It starts the server,
// drives constant load from several threads mixing normal unary and streaming calls with
// random cancellations, short deadlines and malformed requests, and checks that
//   - every call ends with a result or the status its kind of request must get,
//   - the server never dies (and drains cleanly on SIGTERM at the end),
//   - the KV pool is empty once the load stops (before and after the measured phase),
//   - the resident memory grows by less than a bound between the two samples.
// A warm-up phase comes first so that allocator arenas and caches reach their steady size.
//
//   squat-soak --server-bin PATH --model DIR [--duration-s 90] [--warmup-s 15]
//              [--concurrency 6] [--max-rss-growth-mib 48] [--seed N] [--json FILE]
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "squat/v1/generation.grpc.pb.h"
#include "tests/process_test_support.h"

namespace {

using Clock = std::chrono::steady_clock;
using squat::testing_support::ChildOutput;
using squat::testing_support::ChildProcess;
using squat::v1::GenerationService;

// Server limits the malformed requests are built against.
constexpr int kMaxTokensLimit = 512;
constexpr int kMaxPromptTokens = 256;
constexpr int kMaxPromptBytes = 8192;
constexpr int kMaxMessageBytes = 256 << 10;
constexpr int kPoolMib = 64;

struct Options {
  std::string server_bin;
  std::string model;
  double duration_s = 90;
  double warmup_s = 15;
  int concurrency = 6;
  double max_rss_growth_mib = 48;
  uint64_t seed = 0;
  std::string json_path;
};

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](auto* out) {
      if (i + 1 >= argc) return false;
      const std::string v = argv[++i];
      if constexpr (std::is_same_v<std::remove_pointer_t<decltype(out)>, std::string>) {
        *out = v;
        return true;
      } else if constexpr (std::is_floating_point_v<std::remove_pointer_t<decltype(out)>>) {
        return absl::SimpleAtod(v, out);
      } else {
        return absl::SimpleAtoi(v, out);
      }
    };
    bool ok = false;
    if (arg == "--server-bin") ok = value(&o->server_bin);
    else if (arg == "--model") ok = value(&o->model);
    else if (arg == "--duration-s") ok = value(&o->duration_s);
    else if (arg == "--warmup-s") ok = value(&o->warmup_s);
    else if (arg == "--concurrency") ok = value(&o->concurrency);
    else if (arg == "--max-rss-growth-mib") ok = value(&o->max_rss_growth_mib);
    else if (arg == "--seed") ok = value(&o->seed);
    else if (arg == "--json") ok = value(&o->json_path);
    if (!ok) {
      std::fprintf(stderr, "squat-soak: bad or unknown argument '%s'\n", arg.c_str());
      return false;
    }
  }
  if (o->server_bin.empty() || o->model.empty() || o->concurrency < 1 || o->duration_s <= 0) {
    std::fprintf(stderr, "squat-soak: need --server-bin, --model, --concurrency >= 1, --duration-s > 0\n");
    return false;
  }
  return true;
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// The kinds of call the workers send, and the outcomes each may have.
enum class Kind {
  kUnary, kStream, kStreamCancelled, kShortDeadline, kTokenize, kModelInfo,
  kBadTokenId, kMaxTokensAboveLimit, kUnknownKvMethod, kPromptAboveByteLimit, kPromptAboveTokenLimit,
  kMessageAboveLimit, kEmptyPrompt, kBadSampling,
};
constexpr int kKindCount = 14;

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kUnary: return "unary";
    case Kind::kStream: return "stream";
    case Kind::kStreamCancelled: return "stream_cancelled";
    case Kind::kShortDeadline: return "short_deadline";
    case Kind::kTokenize: return "tokenize";
    case Kind::kModelInfo: return "model_info";
    case Kind::kBadTokenId: return "bad_token_id";
    case Kind::kMaxTokensAboveLimit: return "max_tokens_above_limit";
    case Kind::kUnknownKvMethod: return "unknown_kv_method";
    case Kind::kPromptAboveByteLimit: return "prompt_above_byte_limit";
    case Kind::kPromptAboveTokenLimit: return "prompt_above_token_limit";
    case Kind::kMessageAboveLimit: return "message_above_limit";
    case Kind::kEmptyPrompt: return "empty_prompt";
    case Kind::kBadSampling: return "bad_sampling";
  }
  return "?";
}

std::set<grpc::StatusCode> AllowedCodes(Kind kind) {
  using C = grpc::StatusCode;
  switch (kind) {
    case Kind::kUnary:
    case Kind::kStream:
    case Kind::kTokenize:
    case Kind::kModelInfo: return {C::OK};
    case Kind::kStreamCancelled: return {C::CANCELLED, C::OK};  // OK: it finished first
    case Kind::kShortDeadline: return {C::DEADLINE_EXCEEDED, C::OK};
    case Kind::kMessageAboveLimit: return {C::RESOURCE_EXHAUSTED};
    default: return {C::INVALID_ARGUMENT};
  }
}

class Tally {
 public:
  void Add(Kind kind, const grpc::Status& status, const std::string& detail) {
    std::lock_guard<std::mutex> lock(mu_);
    counts_[KindName(kind)][CodeName(status.error_code())]++;
    ++total_;
    if (AllowedCodes(kind).count(status.error_code()) == 0 || !detail.empty()) {
      ++unexpected_;
      if (examples_.size() < 20) {
        examples_.push_back(absl::StrCat(KindName(kind), ": ", CodeName(status.error_code()), ": ",
                                         status.error_message(), detail.empty() ? "" : " (", detail,
                                         detail.empty() ? "" : ")"));
      }
    }
  }
  nlohmann::json Json() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {{"requests", total_}, {"unexpected", unexpected_}, {"by_kind", counts_},
            {"unexpected_examples", examples_}};
  }
  int64_t unexpected() const {
    std::lock_guard<std::mutex> lock(mu_);
    return unexpected_;
  }
  int64_t total() const {
    std::lock_guard<std::mutex> lock(mu_);
    return total_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, int64_t>> counts_;
  std::vector<std::string> examples_;
  int64_t total_ = 0, unexpected_ = 0;
};

class Load {
 public:
  Load(std::shared_ptr<grpc::Channel> channel, int64_t vocab, uint64_t seed, Tally* tally)
      : stub_(GenerationService::NewStub(std::move(channel))), vocab_(vocab), seed_(seed), tally_(tally) {}

  // Runs `threads` workers until `seconds` have passed; every call they started has ended
  // when this returns.
  void Run(int threads, double seconds) {
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([this, end, t] {
        std::mt19937_64 rng(seed_ * 1000003 + static_cast<uint64_t>(t) + (round_ << 20));
        while (Clock::now() < end) One(rng);
      });
    }
    for (std::thread& worker : workers) worker.join();
    ++round_;
  }

 private:
  static int64_t In(std::mt19937_64& rng, int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }

  std::string Words(std::mt19937_64& rng, size_t min_bytes) {
    static const char* const kWords[] = {"river", "stone", "light", "seven", "garden", "music", "the", "of",
                                         "blue", "fox", "caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87", "42", "!"};
    std::string text;
    while (text.size() < min_bytes) absl::StrAppend(&text, text.empty() ? "" : " ", kWords[In(rng, 0, 13)]);
    return text;
  }

  squat::v1::GenerateRequest Normal(std::mt19937_64& rng) {
    squat::v1::GenerateRequest request;
    if (In(rng, 0, 1) == 0) {
      request.set_text(Words(rng, In(rng, 1, 120)));
    } else {
      const int n = In(rng, 1, 96);
      for (int i = 0; i < n; ++i) request.mutable_token_ids()->add_ids(In(rng, 0, vocab_ - 1));
    }
    auto* s = request.mutable_sampling();
    s->set_max_tokens(In(rng, 1, 48));
    s->set_temperature(In(rng, 0, 3) == 0 ? 0.0f : 0.8f);
    s->set_ignore_eos(In(rng, 0, 1) == 0);
    if (In(rng, 0, 4) == 0) s->add_stop("e");
    static const char* const kMethods[] = {"", "", "fp16", "kivi", "squat", "squat-post"};
    request.mutable_kv_cache()->set_method(kMethods[In(rng, 0, 5)]);
    return request;
  }

  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds deadline) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + deadline);
    return context;
  }

  // A unary call; its response must be consistent with its request when OK.
  void Unary(Kind kind, const squat::v1::GenerateRequest& request, std::chrono::milliseconds deadline) {
    auto context = Context(deadline);
    squat::v1::GenerateResponse response;
    const grpc::Status status = stub_->Generate(context.get(), request, &response);
    std::string detail;
    if (status.ok() && (response.token_ids_size() > static_cast<int>(request.sampling().max_tokens()) ||
                        response.finish_reason() == squat::v1::FINISH_REASON_UNSPECIFIED ||
                        response.finish_reason() == squat::v1::FINISH_REASON_ERROR)) {
      detail = absl::StrCat("inconsistent response: ", response.token_ids_size(), " tokens, finish ",
                            squat::v1::FinishReason_Name(response.finish_reason()));
    }
    tally_->Add(kind, status, detail);
  }

  // A stream, cancelled by the client after `cancel_after` chunks (0: never).
  void Stream(Kind kind, const squat::v1::GenerateRequest& request, int cancel_after,
              std::chrono::milliseconds deadline) {
    auto context = Context(deadline);
    auto reader = stub_->GenerateStream(context.get(), request);
    squat::v1::GenerateStreamResponse chunk;
    int chunks = 0;
    bool finished = false;
    while (reader->Read(&chunk)) {
      ++chunks;
      if (chunk.finish_reason() != squat::v1::FINISH_REASON_UNSPECIFIED) finished = true;
      if (cancel_after > 0 && chunks == cancel_after) context->TryCancel();
    }
    const grpc::Status status = reader->Finish();
    std::string detail;
    if (status.ok() && !finished) detail = "stream ended OK without a finish_reason";
    tally_->Add(kind, status, detail);
  }

  void One(std::mt19937_64& rng) {
    const Kind kind = static_cast<Kind>(In(rng, 0, kKindCount - 1));
    constexpr std::chrono::seconds kGenerous(120);  // normal calls must finish well within this
    squat::v1::GenerateRequest request = Normal(rng);
    switch (kind) {
      case Kind::kUnary: return Unary(kind, request, kGenerous);
      case Kind::kStream: return Stream(kind, request, 0, kGenerous);
      case Kind::kStreamCancelled:
        request.mutable_sampling()->set_max_tokens(In(rng, 8, 256));
        request.mutable_sampling()->set_ignore_eos(true);
        return Stream(kind, request, In(rng, 1, 6), kGenerous);
      case Kind::kShortDeadline:
        request.mutable_sampling()->set_max_tokens(In(rng, 64, kMaxTokensLimit));
        request.mutable_sampling()->set_ignore_eos(true);
        if (In(rng, 0, 1) == 0) return Unary(kind, request, std::chrono::milliseconds(In(rng, 5, 400)));
        return Stream(kind, request, 0, std::chrono::milliseconds(In(rng, 5, 400)));
      case Kind::kTokenize: {
        squat::v1::TokenizeRequest tokenize;
        tokenize.set_text(Words(rng, In(rng, 1, 400)));
        squat::v1::TokenizeResponse response;
        auto context = Context(kGenerous);
        const grpc::Status status = stub_->Tokenize(context.get(), tokenize, &response);
        std::string detail;
        for (int32_t id : response.token_ids()) {
          if (id < 0 || id >= vocab_) detail = absl::StrCat("token id ", id, " outside the vocabulary");
        }
        return tally_->Add(kind, status, detail);
      }
      case Kind::kModelInfo: {
        squat::v1::ModelInfo info;
        auto context = Context(kGenerous);
        return tally_->Add(kind, stub_->GetModelInfo(context.get(), squat::v1::GetModelInfoRequest(), &info), "");
      }
      case Kind::kBadTokenId: {
        request.mutable_token_ids()->add_ids(In(rng, 0, 1) == 0 ? -In(rng, 1, 1 << 30) : vocab_ + In(rng, 0, 1 << 20));
        break;
      }
      case Kind::kMaxTokensAboveLimit:
        request.mutable_sampling()->set_max_tokens(kMaxTokensLimit + In(rng, 1, 1 << 30));
        break;
      case Kind::kUnknownKvMethod:
        request.mutable_kv_cache()->set_method(absl::StrCat("no-such-format-", In(rng, 0, 99)));
        break;
      case Kind::kPromptAboveByteLimit:
        request.set_text(Words(rng, In(rng, kMaxPromptBytes + 1, kMaxMessageBytes / 2)));
        break;
      case Kind::kPromptAboveTokenLimit: {
        request.mutable_token_ids()->Clear();
        const int n = In(rng, kMaxPromptTokens + 1, 4 * kMaxPromptTokens);
        for (int i = 0; i < n; ++i) request.mutable_token_ids()->add_ids(In(rng, 0, vocab_ - 1));
        break;
      }
      case Kind::kMessageAboveLimit:
        request.set_text(std::string(kMaxMessageBytes + In(rng, 1, kMaxMessageBytes), 'x'));
        break;
      case Kind::kEmptyPrompt:
        request.clear_prompt();
        break;
      case Kind::kBadSampling: {
        auto* s = request.mutable_sampling();
        switch (In(rng, 0, 3)) {
          case 0: s->set_temperature(-static_cast<float>(In(rng, 1, 100))); break;
          case 1: s->set_top_p(1.0f + static_cast<float>(In(rng, 1, 100))); break;
          case 2: s->set_logprobs(21 + In(rng, 0, 1000)); break;
          default: s->set_presence_penalty(2.5f + static_cast<float>(In(rng, 0, 100))); break;
        }
        break;
      }
    }
    // The malformed kinds: unary or stream, either must be refused with the same status.
    if (In(rng, 0, 1) == 0) return Unary(kind, request, kGenerous);
    return Stream(kind, request, 0, kGenerous);
  }

  std::unique_ptr<GenerationService::Stub> stub_;
  int64_t vocab_;
  uint64_t seed_;
  Tally* tally_;
  uint64_t round_ = 0;
};

bool WaitServing(const std::shared_ptr<grpc::Channel>& channel, ChildProcess& server) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  return squat::testing_support::WaitUntilServing(server, std::chrono::seconds(120), [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckResponse response;
    return health->Check(&context, {}, &response).ok() &&
           response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  });
}

// VmRSS from /proc/<pid>/status in bytes; -1 when it cannot be read.
int64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      int64_t kib = -1;
      in >> kib;
      return kib < 0 ? -1 : kib * 1024;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return -1;
}

// kv_pool_used_bytes once it reads 0 (pages are freed at the engine's next step), or the
// last value read after `timeout`; -1 when the call fails.
int64_t PoolUsedWhenSettled(GenerationService::Stub& stub, std::chrono::seconds timeout) {
  const auto give_up = Clock::now() + timeout;
  int64_t used = -1;
  do {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    squat::v1::ModelInfo info;
    used = stub.GetModelInfo(&context, {}, &info).ok() ? static_cast<int64_t>(info.kv_pool_used_bytes()) : -1;
    if (used == 0) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (Clock::now() < give_up);
  return used;
}

double Mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!ParseArgs(argc, argv, &options)) return 2;
  if (options.seed == 0) options.seed = std::random_device{}();
  const std::string address = absl::StrCat("127.0.0.1:", squat::testing_support::FreeLoopbackPort());
  const std::string log_path = absl::StrCat("/tmp/squat_soak_server_", getpid(), ".log");
  ChildProcess server(
      {options.server_bin, "--model", options.model, "--address", address, "--device", "cpu",
       "--kv-pool-mib", std::to_string(kPoolMib), "--max-tokens-limit", std::to_string(kMaxTokensLimit),
       "--default-max-tokens", "32", "--max-prompt-tokens", std::to_string(kMaxPromptTokens),
       "--max-prompt-bytes", std::to_string(kMaxPromptBytes), "--max-message-bytes",
       std::to_string(kMaxMessageBytes), "--log-level", "warn"},
      ChildOutput::Log(log_path));
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  if (!WaitServing(channel, server)) {
    const std::string log = server.StdoutText();
    std::fprintf(stderr, "squat-soak: the server did not become SERVING; log:\n%s\n", log.c_str());
    return 1;
  }
  auto stub = GenerationService::NewStub(channel);
  squat::v1::ModelInfo info;
  {
    grpc::ClientContext context;
    if (!stub->GetModelInfo(&context, {}, &info).ok()) return 1;
  }

  // RSS sampled once a second over the whole run, for the report.
  std::atomic<bool> sampling{true};
  std::atomic<int64_t> rss_peak{0};
  std::thread sampler([&] {
    while (sampling.load()) {
      rss_peak.store(std::max(rss_peak.load(), RssBytes(server.pid())));
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });

  Tally tally;
  Load load(channel, info.vocab_size(), options.seed, &tally);
  std::printf("squat-soak: seed %llu, %d workers, warm-up %.0fs, measured %.0fs, server pid %d\n",
              static_cast<unsigned long long>(options.seed), options.concurrency, options.warmup_s,
              options.duration_s, server.pid());
  const auto start = Clock::now();
  load.Run(options.concurrency, options.warmup_s);
  const int64_t pool_before = PoolUsedWhenSettled(*stub, std::chrono::seconds(30));
  const int64_t rss_before = RssBytes(server.pid());
  const int64_t requests_before = tally.total();
  load.Run(options.concurrency, options.duration_s);
  const int64_t pool_after = PoolUsedWhenSettled(*stub, std::chrono::seconds(30));
  const int64_t rss_after = RssBytes(server.pid());
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  sampling.store(false);
  sampler.join();

  const bool alive = server.running();
  server.Signal(SIGTERM);
  std::optional<int> exit_code = server.WaitExit(std::chrono::seconds(60));
  if (exit_code.has_value()) exit_code = squat::testing_support::ExitCodeOf(*exit_code);

  const double growth_mib = Mib(rss_after - rss_before);
  std::vector<std::string> failures;
  if (!alive) failures.push_back("the server died during the run");
  if (tally.unexpected() > 0) failures.push_back(absl::StrCat(tally.unexpected(), " calls ended unexpectedly"));
  if (pool_before != 0) failures.push_back(absl::StrCat("KV pool not empty after the warm-up: ", pool_before, " bytes"));
  if (pool_after != 0) failures.push_back(absl::StrCat("KV pool not empty after the run: ", pool_after, " bytes"));
  if (rss_before <= 0 || rss_after <= 0) failures.push_back("could not read the server's RSS");
  if (growth_mib > options.max_rss_growth_mib) {
    failures.push_back(absl::StrCat("RSS grew by ", growth_mib, " MiB (bound ", options.max_rss_growth_mib, ")"));
  }
  if (exit_code != std::optional<int>(0)) {
    failures.push_back(absl::StrCat("the server did not exit 0 on SIGTERM (",
                                    exit_code.has_value() ? std::to_string(*exit_code) : "still running", ")"));
  }

  nlohmann::json report = tally.Json();
  report["seed"] = options.seed;
  report["concurrency"] = options.concurrency;
  report["warmup_s"] = options.warmup_s;
  report["duration_s"] = options.duration_s;
  report["elapsed_s"] = elapsed;
  report["measured_requests"] = tally.total() - requests_before;
  report["rss_mib"] = {{"after_warmup", Mib(rss_before)}, {"after_run", Mib(rss_after)},
                       {"growth", growth_mib}, {"peak", Mib(rss_peak.load())}, {"bound", options.max_rss_growth_mib}};
  report["kv_pool_used_bytes"] = {{"after_warmup", pool_before}, {"after_run", pool_after}};
  report["kv_pool_bytes"] = info.kv_pool_bytes();
  report["server_exit_code"] = exit_code.has_value() ? *exit_code : -1;
  report["failures"] = failures;
  report["passed"] = failures.empty();
  const std::string text = report.dump(2);
  std::printf("%s\n", text.c_str());
  if (!options.json_path.empty()) std::ofstream(options.json_path) << text << "\n";
  if (!failures.empty()) {
    const std::string log = server.StdoutText();
    std::fprintf(stderr, "squat-soak: FAILED\n---- server log (tail) ----\n%s\n",
                 log.substr(log.size() > 8000 ? log.size() - 8000 : 0).c_str());
    return 1;
  }
  std::printf("squat-soak: passed (%lld requests, RSS growth %.1f MiB, pool empty)\n",
              static_cast<long long>(tally.total()), growth_mib);
  return 0;
}
