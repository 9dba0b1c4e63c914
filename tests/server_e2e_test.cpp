// End to end: the real squat-server binary on loopback with the tiny checkpoint, driven by
// the real squat-cli binary (--json output parsed back into the API's proto messages).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/process_test_support.h"
#include "tests/server_process_test_support.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.pb.h"
#include "squat/v1/generation.pb.h"

namespace {

using namespace squat::testing_support;
using squat::v1::GenerateResponse;
using squat::v1::GenerateStreamResponse;

// A hung server or client must fail the test, not the whole ctest run.
constexpr std::chrono::seconds kTestTimeout(150);
constexpr std::chrono::seconds kStartupTimeout(60);
// Requests may run this many tokens; long enough that a stream is still running when the
// test cancels it or signals the server.
constexpr int kMaxTokensLimit = 1024;
constexpr int kLongGeneration = 1000;

std::string RandomHex() { return absl::StrCat(absl::Hex(Rng()(), absl::kZeroPad16)); }

// A fresh prompt per run from a word list: the checks below must hold for any prompt.
std::string RandomPrompt() {
  static const char* const kWords[] = {"the", "quick", "brown", "fox", "jumps", "over",
                                       "lazy", "dog", "server", "token", "cache", "river",
                                       "light", "seven", "blue", "garden", "stone", "music"};
  const int count = 3 + static_cast<int>(Rng()() % 6);
  std::vector<std::string> words;
  for (int i = 0; i < count; ++i) words.push_back(kWords[Rng()() % std::size(kWords)]);
  return absl::StrJoin(words, " ");
}

template <typename Message>
Message ParseJson(const std::string& json) {
  Message message;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\nin: " << json;
  return message;
}

std::string ShellQuote(const std::string& s) {
  std::string quoted = "'";
  for (char c : s) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string TempPath(const std::string& stem) { return UniqueTempPath("squat_e2e", stem); }

// A squat-cli child whose stdout is read through a pipe; stderr goes to a file.
class CliProcess {
 public:
  explicit CliProcess(const std::vector<std::string>& args) : err_path_(TempPath("cli_err")) {
    std::string command = ShellQuote(SQUAT_CLI_BIN);
    for (const std::string& arg : args) absl::StrAppend(&command, " ", ShellQuote(arg));
    absl::StrAppend(&command, " 2>", ShellQuote(err_path_));
    pipe_ = popen(command.c_str(), "r");
  }
  ~CliProcess() {
    if (pipe_ != nullptr) pclose(pipe_);
    std::remove(err_path_.c_str());
  }

  bool started() const { return pipe_ != nullptr; }
  // One line of stdout without its newline; nullopt at end of output.
  std::optional<std::string> ReadLine() {
    std::string line;
    int c;
    while ((c = std::fgetc(pipe_)) != EOF) {
      if (c == '\n') return line;
      line.push_back(static_cast<char>(c));
    }
    if (line.empty()) return std::nullopt;
    return line;
  }
  // Reads the rest of stdout and waits for the exit.
  CliResult Finish() {
    CliResult result;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof(buffer), pipe_)) > 0) result.out.append(buffer, n);
    result.exit_code = ExitCodeOf(pclose(pipe_));
    pipe_ = nullptr;
    result.err = ReadFile(err_path_);
    return result;
  }

 private:
  std::string err_path_;
  FILE* pipe_ = nullptr;
};

CliResult RunCli(const std::vector<std::string>& args) {
  CliProcess cli(args);
  if (!cli.started()) return {};
  return cli.Finish();
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// The tiny model's config.json, read independently of the server.
google::protobuf::Struct TinyConfig() {
  return ParseJson<google::protobuf::Struct>(ReadFile(SQUAT_TINY_MODEL_DIR "/config.json"));
}

double ConfigNumber(const google::protobuf::Struct& config, const std::string& key) {
  const auto it = config.fields().find(key);
  return it == config.fields().end() ? -1 : it->second.number_value();
}

class ServerE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int port = FreeLoopbackPort();
    ASSERT_GT(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
    server_ = StartTinyServer(
        address_, {"--max-tokens-limit", std::to_string(kMaxTokensLimit), "--drain-timeout-s", "60"},
        ChildOutput::Log(TempPath("server_log")));
    ASSERT_TRUE(WaitServing()) << "server did not become SERVING; log:\n" << ServerLog();
  }

  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::fprintf(stderr, "---- squat-server log ----\n%s\n", ServerLog().c_str());
    }
    server_.reset();  // kills it if still running
  }

  std::string ServerLog() const { return server_->StdoutText(); }

  // Polls health through squat-cli until SERVING; false if the server died or never got there.
  bool WaitServing() {
    return WaitUntilServing(*server_, kStartupTimeout, [this] {
      CliResult health = RunCli({"health", "--address", address_, "--json", "--timeout-s", "2"});
      return health.exit_code == 0 &&
             ParseJson<grpc::health::v1::HealthCheckResponse>(health.out).status() ==
                 grpc::health::v1::HealthCheckResponse::SERVING;
    });
  }

  // Waits until the server's log has a line containing every one of `parts`.
  bool WaitForLogLine(const std::vector<std::string>& parts, std::chrono::seconds timeout) const {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    do {
      for (const std::string& line : Lines(ServerLog())) {
        if (std::all_of(parts.begin(), parts.end(),
                        [&](const std::string& p) { return absl::StrContains(line, p); })) {
          return true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } while (std::chrono::steady_clock::now() < give_up);
    return false;
  }

  std::vector<std::string> Cli(const std::string& command, std::vector<std::string> args,
                               const std::string& timeout_s = "60") {
    args.insert(args.begin(), {command, "--address", address_, "--timeout-s", timeout_s});
    return args;
  }

  GenerateResponse Generate(const std::vector<std::string>& args) {
    CliResult result = RunCli(Cli("generate", args));
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return ParseJson<GenerateResponse>(result.out);
  }

  std::vector<GenerateStreamResponse> Stream(const std::vector<std::string>& args) {
    CliResult result = RunCli(Cli("stream", args));
    EXPECT_EQ(result.exit_code, 0) << result.err;
    std::vector<GenerateStreamResponse> chunks;
    for (const std::string& line : Lines(result.out)) {
      chunks.push_back(ParseJson<GenerateStreamResponse>(line));
    }
    return chunks;
  }

  squat::v1::TokenizeResponse Tokenize(const std::string& text, bool add_special_tokens) {
    CliResult result =
        RunCli(Cli("tokenize", {text, "--json", absl::StrCat("--add-special-tokens=",
                                                               add_special_tokens ? "true" : "false")}));
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return ParseJson<squat::v1::TokenizeResponse>(result.out);
  }

  void ExpectInvalidArgument(const std::vector<std::string>& args,
                             const std::vector<std::string>& message_parts) {
    CliResult result = RunCli(Cli("generate", args));
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_TRUE(absl::StartsWith(result.err, "error: INVALID_ARGUMENT: ")) << result.err;
    for (const std::string& part : message_parts) {
      EXPECT_TRUE(absl::StrContains(result.err, part)) << "missing '" << part << "' in " << result.err;
    }
    EXPECT_TRUE(result.out.empty()) << result.out;
  }

  Watchdog watchdog_{"server_e2e_test", kTestTimeout};
  std::string address_;
  std::unique_ptr<ChildProcess> server_;
};

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& ids) {
  return {ids.begin(), ids.end()};
}

TEST_F(ServerE2ETest, UnaryGreedyGenerateRunsToMaxTokens) {
  const std::string prompt = RandomPrompt();
  SCOPED_TRACE(prompt);
  const auto prompt_ids = Ids(Tokenize(prompt, true).token_ids());
  ASSERT_FALSE(prompt_ids.empty());
  const int vocab = static_cast<int>(ConfigNumber(TinyConfig(), "vocab_size"));

  const std::string request_id = "e2e-" + RandomHex();
  const std::vector<std::string> greedy = {"--max-tokens", "8", "--temperature", "0",
                                           "--ignore-eos", "--json"};
  std::vector<std::string> args = greedy;
  args.insert(args.begin(), prompt);
  args.insert(args.end(), {"--request-id", request_id});
  const GenerateResponse response = Generate(args);
  EXPECT_EQ(response.request_id(), request_id);
  ASSERT_EQ(response.token_ids_size(), 8);
  for (int32_t id : response.token_ids()) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, vocab);
  }
  EXPECT_EQ(response.finish_reason(), squat::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.usage().completion_tokens(), 8u);
  EXPECT_EQ(response.usage().prompt_tokens(), prompt_ids.size());
  EXPECT_EQ(response.kv_cache_method(), "squat");  // the server default
  EXPECT_TRUE(WaitForLogLine({request_id, "finished", "reason=length", "completion_tokens=8"},
                             std::chrono::seconds(10)));

  // The same prompt as token ids goes through the other prompt path to the same result.
  std::vector<std::string> by_ids = greedy;
  by_ids.insert(by_ids.end(), {"--token-ids", absl::StrJoin(prompt_ids, ",")});
  const GenerateResponse from_ids = Generate(by_ids);
  EXPECT_EQ(Ids(from_ids.token_ids()), Ids(response.token_ids()));
  EXPECT_EQ(from_ids.text(), response.text());
  EXPECT_FALSE(from_ids.request_id().empty());  // generated by the server
  EXPECT_NE(from_ids.request_id(), request_id);
}

TEST_F(ServerE2ETest, StreamChunksConcatenateToTheUnaryResult) {
  const std::string prompt = RandomPrompt();
  SCOPED_TRACE(prompt);
  const int max_tokens = 10 + static_cast<int>(Rng()() % 10);
  const std::vector<std::string> args = {prompt, "--max-tokens", std::to_string(max_tokens),
                                         "--temperature", "0", "--ignore-eos", "--json"};
  const GenerateResponse unary = Generate(args);
  ASSERT_EQ(unary.token_ids_size(), max_tokens);

  const std::vector<GenerateStreamResponse> chunks = Stream(args);
  ASSERT_FALSE(chunks.empty());
  std::string text;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < chunks.size(); ++i) {
    text += chunks[i].text();
    ids.insert(ids.end(), chunks[i].token_ids().begin(), chunks[i].token_ids().end());
    EXPECT_EQ(chunks[i].request_id(), chunks[0].request_id());
    const bool last = i + 1 == chunks.size();
    EXPECT_EQ(chunks[i].finish_reason() != squat::v1::FINISH_REASON_UNSPECIFIED, last) << i;
  }
  EXPECT_GT(chunks.size(), 1u);  // streamed, not one message at the end
  EXPECT_EQ(ids, Ids(unary.token_ids()));
  EXPECT_EQ(text, unary.text());
  const GenerateStreamResponse& last = chunks.back();
  EXPECT_EQ(last.finish_reason(), squat::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), static_cast<uint32_t>(max_tokens));
  EXPECT_EQ(last.usage().prompt_tokens(), unary.usage().prompt_tokens());
}

TEST_F(ServerE2ETest, SeededSamplingIsReproducible) {
  const std::string prompt = RandomPrompt();
  const uint64_t seed = Rng()() >> 1;
  const uint64_t other_seed = seed ^ 0x5bd1e995ULL;
  SCOPED_TRACE(absl::StrCat(prompt, " seed ", seed));
  auto sampled = [&](uint64_t s) {
    return std::vector<std::string>{prompt, "--max-tokens", "16", "--temperature", "1.0",
                                    "--ignore-eos", "--seed", std::to_string(s), "--json"};
  };
  const GenerateResponse first = Generate(sampled(seed));
  const GenerateResponse second = Generate(sampled(seed));
  ASSERT_EQ(first.token_ids_size(), 16);
  EXPECT_EQ(Ids(first.token_ids()), Ids(second.token_ids()));
  EXPECT_EQ(first.text(), second.text());

  // The streaming path samples the same sequence for the same seed.
  std::vector<int32_t> streamed;
  for (const auto& chunk : Stream(sampled(seed))) {
    streamed.insert(streamed.end(), chunk.token_ids().begin(), chunk.token_ids().end());
  }
  EXPECT_EQ(streamed, Ids(first.token_ids()));

  // The random tiny model spreads its probability over 512 tokens: 16 tokens drawn with
  // another seed match only by a vanishing chance.
  const GenerateResponse other = Generate(sampled(other_seed));
  EXPECT_NE(Ids(other.token_ids()), Ids(first.token_ids()));
}

TEST_F(ServerE2ETest, TokenizeReturnsVocabularyEntries) {
  const std::string text = RandomPrompt();
  SCOPED_TRACE(text);
  const auto with_special = Tokenize(text, true);
  const auto without_special = Tokenize(text, false);
  ASSERT_GT(without_special.token_ids_size(), 0);
  ASSERT_EQ(with_special.tokens_size(), with_special.token_ids_size());
  ASSERT_EQ(without_special.tokens_size(), without_special.token_ids_size());

  // Special tokens are added around the plain encoding, never inside it.
  const auto plain = Ids(without_special.token_ids());
  const auto full = Ids(with_special.token_ids());
  const int bos = static_cast<int>(ConfigNumber(TinyConfig(), "bos_token_id"));
  ASSERT_EQ(full.size(), plain.size() + 1);
  EXPECT_EQ(full.front(), bos);
  EXPECT_TRUE(std::equal(plain.begin(), plain.end(), full.begin() + 1));

  // Each token string is the tokenizer.json vocabulary entry of its id.
  const auto tokenizer =
      ParseJson<google::protobuf::Struct>(ReadFile(SQUAT_TINY_MODEL_DIR "/tokenizer.json"));
  std::map<int, std::string> vocab;
  for (const auto& [token, id] :
       tokenizer.fields().at("model").struct_value().fields().at("vocab").struct_value().fields()) {
    vocab[static_cast<int>(id.number_value())] = token;
  }
  for (const auto& added : tokenizer.fields().at("added_tokens").list_value().values()) {
    const auto& fields = added.struct_value().fields();
    vocab[static_cast<int>(fields.at("id").number_value())] = fields.at("content").string_value();
  }
  for (int i = 0; i < with_special.token_ids_size(); ++i) {
    EXPECT_EQ(with_special.tokens(i), vocab[with_special.token_ids(i)]) << "id " << with_special.token_ids(i);
  }
  // Byte-level BPE: the tokens spell the text, spaces written as 'Ġ'.
  std::string spelled;
  for (const std::string& token : without_special.tokens()) spelled += token;
  std::string expected;
  for (char c : text) expected += c == ' ' ? std::string("\xC4\xA0") : std::string(1, c);
  EXPECT_EQ(spelled, expected);
}

TEST_F(ServerE2ETest, ModelInfoMatchesTheCheckpointConfig) {
  const CliResult result = RunCli(Cli("info", {"--json"}));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto info = ParseJson<squat::v1::ModelInfo>(result.out);
  const auto config = TinyConfig();
  EXPECT_EQ(info.vocab_size(), ConfigNumber(config, "vocab_size"));
  EXPECT_EQ(info.hidden_size(), ConfigNumber(config, "hidden_size"));
  EXPECT_EQ(info.num_layers(), ConfigNumber(config, "num_hidden_layers"));
  EXPECT_EQ(info.num_attention_heads(), ConfigNumber(config, "num_attention_heads"));
  EXPECT_EQ(info.num_key_value_heads(), ConfigNumber(config, "num_key_value_heads"));
  EXPECT_EQ(info.head_dim(), ConfigNumber(config, "head_dim"));
  EXPECT_EQ(info.max_model_len(), ConfigNumber(config, "max_position_embeddings"));
  EXPECT_EQ(info.model_dir(), SQUAT_TINY_MODEL_DIR);
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_FALSE(info.architecture().empty());
  EXPECT_FALSE(info.dtype().empty());
  const int eos = static_cast<int>(ConfigNumber(config, "eos_token_id"));
  EXPECT_NE(std::find(info.eos_token_ids().begin(), info.eos_token_ids().end(), eos),
            info.eos_token_ids().end());
  // float32 weights: 4 bytes per parameter, embeddings and LM head at least.
  EXPECT_GE(info.weight_bytes(), 4u * 2u * static_cast<uint64_t>(info.vocab_size()) * info.hidden_size());
  auto find = [&](const std::string& method, uint32_t bits) {
    return std::find_if(info.kv_formats().begin(), info.kv_formats().end(), [&](const auto& f) {
      return f.method() == method && (method == "fp16" || f.k_bits() == bits);
    });
  };
  for (const char* method : {"kivi", "squat", "squat-post"}) {
    for (uint32_t bits : {2u, 4u}) ASSERT_NE(find(method, bits), info.kv_formats().end()) << method << bits;
  }
  const auto fp16 = find("fp16", 0);
  const auto squat2 = find("squat", 2);
  ASSERT_NE(fp16, info.kv_formats().end());
  EXPECT_FALSE(fp16->is_default());
  EXPECT_TRUE(squat2->is_default());
  // 2-bit codes plus fp16 scale/min per 32 elements: 3 bits per element vs 32 (float32 on CPU).
  EXPECT_DOUBLE_EQ(fp16->bytes_per_token() / squat2->bytes_per_token(), 32.0 / 3.0);
  EXPECT_GT(squat2->capacity_tokens(), fp16->capacity_tokens());
  EXPECT_GT(info.kv_page_bytes(), 0u);
  EXPECT_GE(info.kv_pool_bytes(), info.kv_page_bytes());
  EXPECT_EQ(info.kv_pool_used_bytes(), 0u);  // idle
}

TEST_F(ServerE2ETest, KvCacheOverridePerRequest) {
  const std::string prompt = RandomPrompt();
  for (const auto& [method, bits] : std::vector<std::pair<std::string, std::string>>{
           {"fp16", ""}, {"kivi", "4"}, {"squat-post", "2"}, {"squat", "4"}}) {
    std::vector<std::string> args = {prompt, "--max-tokens", "5", "--ignore-eos", "--json", "--kv-method", method};
    if (!bits.empty()) args.insert(args.end(), {"--k-bits", bits, "--v-bits", bits});
    const GenerateResponse response = Generate(args);
    EXPECT_EQ(response.kv_cache_method(), method);
    EXPECT_EQ(response.token_ids_size(), 5);
  }
  ExpectInvalidArgument({prompt, "--max-tokens", "4", "--kv-method", "kivi", "--k-bits", "3"}, {"k_bits"});
}

TEST_F(ServerE2ETest, BadRequestsAreInvalidArgumentWithAClearMessage) {
  ExpectInvalidArgument({"", "--max-tokens", "4"}, {"prompt is empty"});
  const int over = kMaxTokensLimit + 1 + static_cast<int>(Rng()() % 100);
  ExpectInvalidArgument({RandomPrompt(), "--max-tokens", std::to_string(over)},
                        {"max_tokens", std::to_string(over), std::to_string(kMaxTokensLimit)});
  const std::string method = "kv" + RandomHex().substr(0, 6);
  ExpectInvalidArgument({RandomPrompt(), "--max-tokens", "4", "--kv-method", method},
                        {method, "fp16"});
  // Usage errors never reach the server and exit 2.
  const CliResult usage = RunCli(Cli("generate", {"--token-ids", "1,x"}));
  EXPECT_EQ(usage.exit_code, 2) << usage.err;
  // The server is unharmed.
  EXPECT_EQ(Generate({RandomPrompt(), "--max-tokens", "3", "--ignore-eos", "--json"}).token_ids_size(), 3);
}

TEST_F(ServerE2ETest, ClientCancellationLeavesTheServerHealthy) {
  const std::string request_id = "cancel-" + RandomHex();
  const int cancel_after = 2 + static_cast<int>(Rng()() % 4);
  const CliResult cancelled = RunCli(Cli(
      "stream", {RandomPrompt(), "--max-tokens", std::to_string(kLongGeneration), "--ignore-eos",
                 "--json", "--request-id", request_id, "--cancel-after-tokens",
                 std::to_string(cancel_after)}));
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.err;
  EXPECT_TRUE(absl::StrContains(cancelled.err, "cancelled after")) << cancelled.err;
  int received = 0;
  for (const std::string& line : Lines(cancelled.out)) {
    const auto chunk = ParseJson<GenerateStreamResponse>(line);
    received += chunk.token_ids_size();
    EXPECT_EQ(chunk.finish_reason(), squat::v1::FINISH_REASON_UNSPECIFIED);
  }
  EXPECT_GE(received, cancel_after);
  EXPECT_LT(received, kLongGeneration);

  // The server noticed and stopped the request early.
  EXPECT_TRUE(WaitForLogLine({request_id, "finished", "reason=cancelled"}, std::chrono::seconds(30)));

  const CliResult health = RunCli(Cli("health", {}));
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");
  const GenerateResponse after = Generate({RandomPrompt(), "--max-tokens", "5", "--ignore-eos", "--json"});
  EXPECT_EQ(after.token_ids_size(), 5);
  EXPECT_EQ(after.finish_reason(), squat::v1::FINISH_REASON_LENGTH);
}

TEST_F(ServerE2ETest, CallDeadlineStopsTheRequestOnTheServer) {
  const std::string request_id = "deadline-" + RandomHex();
  // A 0.2 s deadline against a generation of a thousand tokens.
  const CliResult result =
      RunCli(Cli("generate",
                 {RandomPrompt(), "--max-tokens", std::to_string(kLongGeneration), "--ignore-eos",
                  "--request-id", request_id},
                 /*timeout_s=*/"0.2"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(result.err, "error: DEADLINE_EXCEEDED: ")) << result.err;
  EXPECT_TRUE(WaitForLogLine({request_id, "finished", "reason=cancelled"}, std::chrono::seconds(30)));
  EXPECT_EQ(Generate({RandomPrompt(), "--max-tokens", "4", "--ignore-eos", "--json"}).token_ids_size(), 4);
}

TEST_F(ServerE2ETest, SigtermFinishesTheInFlightRequestAndExitsZero) {
  const std::string request_id = "drain-" + RandomHex();
  CliProcess stream(Cli("stream", {RandomPrompt(), "--max-tokens", std::to_string(kLongGeneration),
                                   "--temperature", "0", "--ignore-eos", "--json",
                                   "--request-id", request_id}));
  ASSERT_TRUE(stream.started());
  // The first chunk proves the request is running.
  const std::optional<std::string> first = stream.ReadLine();
  ASSERT_TRUE(first.has_value());
  server_->Signal(SIGTERM);
  ASSERT_TRUE(WaitForLogLine({"received SIGTERM"}, std::chrono::seconds(30)));

  // While the long request drains, the server says so and refuses new work.
  const CliResult health = RunCli(Cli("health", {}));
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "NOT_SERVING\n");
  const CliResult refused = RunCli(Cli("generate", {RandomPrompt(), "--max-tokens", "2"}));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.err, "error: UNAVAILABLE: server is draining\n");

  const CliResult rest = stream.Finish();
  ASSERT_EQ(rest.exit_code, 0) << rest.err;
  std::vector<std::string> lines = Lines(rest.out);
  lines.insert(lines.begin(), *first);
  int received = 0;
  GenerateStreamResponse last;
  for (const std::string& line : lines) {
    last = ParseJson<GenerateStreamResponse>(line);
    received += last.token_ids_size();
  }
  EXPECT_EQ(received, kLongGeneration);
  EXPECT_EQ(last.finish_reason(), squat::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), static_cast<uint32_t>(kLongGeneration));

  const std::optional<int> exit_status = server_->WaitExit(std::chrono::seconds(60));
  ASSERT_TRUE(exit_status.has_value()) << "server still running after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*exit_status));
  EXPECT_EQ(ExitCodeOf(*exit_status), 0);

  // The request ended after the drain began: it really was in flight.
  const std::string log = ServerLog();
  const size_t drain_at = log.find("received SIGTERM");
  const size_t finished_at = log.find(absl::StrCat("[", request_id, "] stream finished"));
  ASSERT_NE(drain_at, std::string::npos) << log;
  ASSERT_NE(finished_at, std::string::npos) << log;
  EXPECT_LT(drain_at, finished_at);
  EXPECT_TRUE(absl::StrContains(log, "squat-server stopped"));
}

}  // namespace
