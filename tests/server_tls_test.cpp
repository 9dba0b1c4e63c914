// Transport security and request limits of the real squat-server binary: TLS, mutual TLS,
// the bearer token, the message / prompt size limits and per-request deadlines. A CA, a
// server certificate (SAN 127.0.0.1 and localhost), a client certificate and a second,
// untrusted CA with its own client certificate are generated with openssl for every run.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "squat/v1/generation.grpc.pb.h"
#include "tests/process_test_support.h"
#include "tests/server_process_test_support.h"

namespace {

namespace fs = std::filesystem;
using namespace squat::testing_support;
using squat::v1::GenerationService;

constexpr std::chrono::seconds kStartupTimeout(60);
constexpr int kMaxMessageBytes = 64 << 10;
constexpr int kMaxPromptBytes = 4096;
constexpr int kMaxPromptTokens = 48;

std::string TempPath(const std::string& stem) { return UniqueTempPath("squat_tls", stem); }

std::string ReadText(const std::string& path) { return ReadFile(path); }

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Certificates and keys for one test process (EC P-256: fast to generate).
struct Pki {
  std::string dir;
  std::string ca, server_cert, server_key, client_cert, client_key;
  std::string rogue_ca, rogue_client_cert, rogue_client_key;
  std::string token, token_file;

  // Writes everything into a fresh temp directory (removed with the object).
  void Generate() {
    Pki& p = *this;
    p.dir = TempPath("pki");
    fs::create_directories(p.dir);
    const std::string d = p.dir + "/";
    auto run = [&](const std::string& command) {
      const int status = std::system((command + " >>" + d + "openssl.log 2>&1").c_str());
      EXPECT_EQ(status, 0) << command << "\n" << ReadText(d + "openssl.log");
    };
    const std::string newkey = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for (const std::string ca : {"ca", "rogue_ca"}) {
      run(absl::StrCat("openssl req -x509 ", newkey, " -keyout ", d, ca, ".key -out ", d, ca,
                       ".pem -days 2 -subj /CN=squat-test-", ca));
    }
    WriteText(d + "server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
    WriteText(d + "client.ext", "extendedKeyUsage=clientAuth\n");
    auto issue = [&](const std::string& name, const std::string& ca, const std::string& ext) {
      run(absl::StrCat("openssl req ", newkey, " -keyout ", d, name, ".key -out ", d, name,
                       ".csr -subj /CN=squat-test-", name));
      run(absl::StrCat("openssl x509 -req -in ", d, name, ".csr -CA ", d, ca, ".pem -CAkey ", d, ca,
                       ".key -CAcreateserial -days 2 -out ", d, name, ".pem -extfile ", d, ext));
    };
    issue("server", "ca", "server.ext");
    issue("client", "ca", "client.ext");
    issue("rogue_client", "rogue_ca", "client.ext");
    p.ca = d + "ca.pem";
    p.server_cert = d + "server.pem";
    p.server_key = d + "server.key";
    p.client_cert = d + "client.pem";
    p.client_key = d + "client.key";
    p.rogue_ca = d + "rogue_ca.pem";
    p.rogue_client_cert = d + "rogue_client.pem";
    p.rogue_client_key = d + "rogue_client.key";
    p.token = absl::StrCat("tok-", absl::Hex(Rng()(), absl::kZeroPad16), absl::Hex(Rng()(), absl::kZeroPad16));
    p.token_file = d + "token";
    WriteText(p.token_file, p.token + "\n");  // a trailing newline, as editors write it
  }
  ~Pki() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

struct ClientIdentity {
  std::string ca;           // empty: plaintext
  std::string cert, key;    // client certificate (mutual TLS)
  std::string token;        // empty: no authorization metadata
  std::string server_name;  // SSL target name override
};

std::shared_ptr<grpc::Channel> Connect(const std::string& address, const ClientIdentity& id) {
  if (id.ca.empty()) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadText(id.ca);
  if (!id.cert.empty()) {
    ssl.pem_cert_chain = ReadText(id.cert);
    ssl.pem_private_key = ReadText(id.key);
  }
  grpc::ChannelArguments args;
  if (!id.server_name.empty()) args.SetSslTargetNameOverride(id.server_name);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

// A context with the token (when given) and a deadline.
std::unique_ptr<grpc::ClientContext> Context(const ClientIdentity& id, std::chrono::milliseconds deadline) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!id.token.empty()) context->AddMetadata("authorization", "Bearer " + id.token);
  context->set_deadline(std::chrono::system_clock::now() + deadline);
  return context;
}

grpc::Status ModelInfo(const std::string& address, const ClientIdentity& id, squat::v1::ModelInfo* info) {
  auto stub = GenerationService::NewStub(Connect(address, id));
  auto context = Context(id, std::chrono::seconds(10));
  return stub->GetModelInfo(context.get(), squat::v1::GetModelInfoRequest(), info);
}

grpc::Status HealthCheck(const std::string& address, const ClientIdentity& id,
                         grpc::health::v1::HealthCheckResponse* response) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(address, id));
  auto context = Context(id, std::chrono::seconds(5));
  return stub->Check(context.get(), grpc::health::v1::HealthCheckRequest(), response);
}

int64_t RandomIn(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(Rng()); }

std::string RandomWords(size_t min_bytes) {
  static const char* const kWords[] = {"river", "stone", "light", "seven", "garden", "music", "blue", "fox"};
  std::string text;
  while (text.size() < min_bytes) absl::StrAppend(&text, text.empty() ? "" : " ", kWords[RandomIn(0, 7)]);
  return text;
}

// One squat-server with the given security flags on a fresh loopback port.
class TlsServer {
 public:
  TlsServer(const std::vector<std::string>& flags) : address_(absl::StrCat("127.0.0.1:", FreeLoopbackPort())) {
    std::vector<std::string> args = {"--kv-pool-mib", "32", "--max-tokens-limit", "4096"};
    args.insert(args.end(), flags.begin(), flags.end());
    child_ = StartTinyServer(address_, args, ChildOutput::Log(TempPath("server_log")));
  }

  // Health over the given identity until SERVING.
  bool WaitServing(const ClientIdentity& id) {
    return WaitUntilServing(*child_, kStartupTimeout, [&] {
      grpc::health::v1::HealthCheckResponse response;
      return HealthCheck(address_, id, &response).ok() &&
             response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    });
  }

  const std::string& address() const { return address_; }
  ChildProcess& child() { return *child_; }
  std::string Log() const { return child_->StdoutText(); }

 private:
  std::string address_;
  std::unique_ptr<ChildProcess> child_;
};

// ---------------------------------------------------------------------------------------
// TLS with a bearer token and tight limits.

class TlsTokenServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_.Generate();
    ASSERT_FALSE(HasFailure());
    server_ = std::make_unique<TlsServer>(std::vector<std::string>{
        "--tls-cert", pki_.server_cert, "--tls-key", pki_.server_key, "--auth-token-file", pki_.token_file,
        "--max-message-bytes", std::to_string(kMaxMessageBytes), "--max-prompt-bytes",
        std::to_string(kMaxPromptBytes), "--max-prompt-tokens", std::to_string(kMaxPromptTokens)});
    ASSERT_TRUE(server_->WaitServing(Trusted())) << server_->Log();
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "---- squat-server log ----\n%s\n", server_->Log().c_str());
  }

  ClientIdentity Trusted() const { return {pki_.ca, "", "", pki_.token, ""}; }
  std::unique_ptr<GenerationService::Stub> Stub(const ClientIdentity& id) {
    return GenerationService::NewStub(Connect(server_->address(), id));
  }
  grpc::Status Generate(const ClientIdentity& id, const squat::v1::GenerateRequest& request,
                        squat::v1::GenerateResponse* response,
                        std::chrono::milliseconds deadline = std::chrono::seconds(60)) {
    auto context = Context(id, deadline);
    return Stub(id)->Generate(context.get(), request, response);
  }
  int64_t PoolUsedBytes() {
    squat::v1::ModelInfo info;
    const grpc::Status status = ModelInfo(server_->address(), Trusted(), &info);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return static_cast<int64_t>(info.kv_pool_used_bytes());
  }
  int64_t VocabSize() {
    squat::v1::ModelInfo info;
    EXPECT_TRUE(ModelInfo(server_->address(), Trusted(), &info).ok());
    return info.vocab_size();
  }

  Watchdog watchdog_{"server_tls_test", std::chrono::seconds(150)};
  Pki pki_;
  std::unique_ptr<TlsServer> server_;
};

TEST_F(TlsTokenServerTest, ClientWithTheCaAndTheTokenGenerates) {
  squat::v1::GenerateRequest request;
  request.set_text(RandomWords(RandomIn(5, 30)));  // well under kMaxPromptTokens
  const uint32_t max_tokens = RandomIn(2, 12);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  squat::v1::GenerateResponse response;
  const grpc::Status status = Generate(Trusted(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(response.token_ids_size(), static_cast<int>(max_tokens));
  EXPECT_EQ(response.finish_reason(), squat::v1::FINISH_REASON_LENGTH);
}

TEST_F(TlsTokenServerTest, PlaintextClientIsRefused) {
  ClientIdentity plaintext = Trusted();
  plaintext.ca.clear();
  squat::v1::ModelInfo info;
  EXPECT_EQ(ModelInfo(server_->address(), plaintext, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTokenServerTest, ClientTrustingAnotherCaRefusesTheServer) {
  ClientIdentity wrong_ca = Trusted();
  wrong_ca.ca = pki_.rogue_ca;
  squat::v1::ModelInfo info;
  EXPECT_EQ(ModelInfo(server_->address(), wrong_ca, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTokenServerTest, ServerNameMustMatchTheCertificate) {
  ClientIdentity by_name = Trusted();
  by_name.server_name = "localhost";  // in the certificate's SAN
  squat::v1::ModelInfo info;
  EXPECT_TRUE(ModelInfo(server_->address(), by_name, &info).ok());
  by_name.server_name = absl::StrCat("host-", RandomIn(1, 1 << 20), ".example");
  EXPECT_EQ(ModelInfo(server_->address(), by_name, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTokenServerTest, EveryMethodWithoutTheTokenIsUnauthenticated) {
  ClientIdentity anonymous = Trusted();
  anonymous.token.clear();
  auto stub = Stub(anonymous);
  squat::v1::GenerateRequest request;
  request.set_text(RandomWords(20));
  {
    squat::v1::GenerateResponse response;
    auto context = Context(anonymous, std::chrono::seconds(10));
    const grpc::Status status = stub->Generate(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "authorization")) << status.error_message();
  }
  {
    auto context = Context(anonymous, std::chrono::seconds(10));
    auto reader = stub->GenerateStream(context.get(), request);
    squat::v1::GenerateStreamResponse chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    squat::v1::TokenizeRequest tokenize;
    tokenize.set_text(RandomWords(10));
    squat::v1::TokenizeResponse response;
    auto context = Context(anonymous, std::chrono::seconds(10));
    EXPECT_EQ(stub->Tokenize(context.get(), tokenize, &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  squat::v1::ModelInfo info;
  EXPECT_EQ(ModelInfo(server_->address(), anonymous, &info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TlsTokenServerTest, WrongTokenIsUnauthenticated) {
  ClientIdentity wrong = Trusted();
  const size_t position = RandomIn(0, static_cast<int64_t>(wrong.token.size()) - 1);
  wrong.token[position] = wrong.token[position] == 'x' ? 'y' : 'x';  // same length, one byte off
  squat::v1::ModelInfo info;
  grpc::Status status = ModelInfo(server_->address(), wrong, &info);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  wrong.token = pki_.token.substr(0, RandomIn(1, static_cast<int64_t>(pki_.token.size()) - 1));  // a prefix
  status = ModelInfo(server_->address(), wrong, &info);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
}

TEST_F(TlsTokenServerTest, HealthNeedsNoToken) {
  ClientIdentity anonymous = Trusted();
  anonymous.token.clear();
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = HealthCheck(server_->address(), anonymous, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(TlsTokenServerTest, MessageAboveTheLimitIsResourceExhausted) {
  squat::v1::GenerateRequest request;
  request.set_text(std::string(kMaxMessageBytes + RandomIn(1, 4 * kMaxMessageBytes), 'a'));
  squat::v1::GenerateResponse response;
  const grpc::Status status = Generate(Trusted(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST_F(TlsTokenServerTest, PromptAboveTheByteLimitIsInvalid) {
  squat::v1::GenerateRequest request;
  request.set_text(RandomWords(RandomIn(kMaxPromptBytes + 1, kMaxMessageBytes / 2)));
  squat::v1::GenerateResponse response;
  const grpc::Status status = Generate(Trusted(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(), absl::StrCat(request.text().size(), " bytes")))
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "--max-prompt-bytes")) << status.error_message();
}

TEST_F(TlsTokenServerTest, PromptAboveTheTokenLimitIsInvalidAndAtTheLimitRuns) {
  const int64_t vocab = VocabSize();
  ASSERT_GT(vocab, 3);
  squat::v1::GenerateRequest request;
  const int too_many = RandomIn(kMaxPromptTokens + 1, 4 * kMaxPromptTokens);
  for (int i = 0; i < too_many; ++i) request.mutable_token_ids()->add_ids(RandomIn(0, vocab - 1));
  request.mutable_sampling()->set_max_tokens(2);
  squat::v1::GenerateResponse response;
  grpc::Status status = Generate(Trusted(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(status.error_message(),
                                absl::StrCat(too_many, " tokens; the limit is ", kMaxPromptTokens)))
      << status.error_message();

  request.mutable_token_ids()->mutable_ids()->Truncate(kMaxPromptTokens);
  status = Generate(Trusted(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.usage().prompt_tokens(), static_cast<uint32_t>(kMaxPromptTokens));
}

// The tiny model writes a few hundred tokens per second on CPU, far from its ~2000-token
// limit within the deadline, so the deadline passes mid-generation; the request's pages
// must go back to the pool.
TEST_F(TlsTokenServerTest, PassedDeadlineIsDeadlineExceededAndFreesThePages) {
  ASSERT_EQ(PoolUsedBytes(), 0);
  squat::v1::GenerateRequest request;
  request.set_text(RandomWords(RandomIn(5, 30)));
  request.mutable_sampling()->set_max_tokens(4000);
  request.mutable_sampling()->set_ignore_eos(true);
  // The TLS handshake happens before the deadline starts (on a loaded machine it alone can
  // take most of a second), so that the deadline passes mid-generation.
  auto stub = Stub(Trusted());
  {
    squat::v1::ModelInfo info;
    auto warm = Context(Trusted(), std::chrono::seconds(30));
    ASSERT_TRUE(stub->GetModelInfo(warm.get(), squat::v1::GetModelInfoRequest(), &info).ok());
  }
  auto context = Context(Trusted(), std::chrono::milliseconds(RandomIn(1000, 1500)));
  auto reader = stub->GenerateStream(context.get(), request);
  squat::v1::GenerateStreamResponse chunk;
  // Running: it holds pages now. (On a machine loaded enough, the deadline can pass before the
  // first token; the call must still end DEADLINE_EXCEEDED and free its pages.)
  if (reader->Read(&chunk)) EXPECT_GT(PoolUsedBytes(), 0);
  while (reader->Read(&chunk)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();

  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int64_t used = PoolUsedBytes();
  while (used != 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    used = PoolUsedBytes();
  }
  EXPECT_EQ(used, 0);
}

// ---------------------------------------------------------------------------------------
// Mutual TLS: the server requires a client certificate signed by its client CA.

class MutualTlsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_.Generate();
    ASSERT_FALSE(HasFailure());
    server_ = std::make_unique<TlsServer>(std::vector<std::string>{
        "--tls-cert", pki_.server_cert, "--tls-key", pki_.server_key, "--tls-client-ca", pki_.ca,
        "--auth-token-file", pki_.token_file});
    ASSERT_TRUE(server_->WaitServing(Client())) << server_->Log();
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "---- squat-server log ----\n%s\n", server_->Log().c_str());
  }
  ClientIdentity Client() const { return {pki_.ca, pki_.client_cert, pki_.client_key, pki_.token, ""}; }

  struct Run {
    int exit_code = -1;
    std::string out, err;
  };
  Run RunBinary(const std::string& binary, const std::vector<std::string>& args) {
    std::string command = binary;
    for (const std::string& arg : args) absl::StrAppend(&command, " '", arg, "'");
    const std::string out = TempPath("out"), err = TempPath("err");
    Run run;
    run.exit_code = ExitCodeOf(std::system(absl::StrCat(command, " >", out, " 2>", err).c_str()));
    run.out = ReadText(out);
    run.err = ReadText(err);
    std::remove(out.c_str());
    std::remove(err.c_str());
    return run;
  }

  Watchdog watchdog_{"server_tls_test", std::chrono::seconds(150)};
  Pki pki_;
  std::unique_ptr<TlsServer> server_;
};

TEST_F(MutualTlsServerTest, ClientWithoutACertificateIsRefused) {
  ClientIdentity no_cert = Client();
  no_cert.cert.clear();
  no_cert.key.clear();
  squat::v1::ModelInfo info;
  EXPECT_EQ(ModelInfo(server_->address(), no_cert, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(MutualTlsServerTest, ClientCertificateFromAnotherCaIsRefused) {
  ClientIdentity rogue = Client();
  rogue.cert = pki_.rogue_client_cert;
  rogue.key = pki_.rogue_client_key;
  squat::v1::ModelInfo info;
  EXPECT_EQ(ModelInfo(server_->address(), rogue, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(MutualTlsServerTest, ClientWithItsCertificateIsServed) {
  squat::v1::ModelInfo info;
  const grpc::Status status = ModelInfo(server_->address(), Client(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GT(info.vocab_size(), 0u);
}

TEST_F(MutualTlsServerTest, CliAndBenchTakeTheTlsAndTokenFlags) {
  const std::vector<std::string> tls = {"--address", server_->address(), "--tls-ca", pki_.ca, "--tls-cert",
                                        pki_.client_cert, "--tls-key", pki_.client_key};
  std::vector<std::string> args = {"generate", RandomWords(RandomIn(5, 40)), "--max-tokens", "3", "--json",
                                   "--ignore-eos", "--auth-token-file", pki_.token_file};
  args.insert(args.end(), tls.begin(), tls.end());
  Run cli = RunBinary(SQUAT_CLI_BIN, args);
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  squat::v1::GenerateResponse response;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(cli.out, &response).ok()) << cli.out;
  EXPECT_EQ(response.token_ids_size(), 3) << cli.out;

  // Without the client certificate the handshake fails.
  args = {"info", "--address", server_->address(), "--tls-ca", pki_.ca, "--auth-token", pki_.token,
          "--timeout-s", "5"};
  cli = RunBinary(SQUAT_CLI_BIN, args);
  EXPECT_EQ(cli.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(cli.err, "UNAVAILABLE")) << cli.err;

  // A token in plaintext is refused by the client itself.
  cli = RunBinary(SQUAT_CLI_BIN, {"info", "--address", server_->address(), "--auth-token", pki_.token});
  EXPECT_EQ(cli.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(cli.err, "needs TLS")) << cli.err;

  args = {"--requests", "4", "--concurrency", "2", "--prompt-tokens", "4,16", "--max-tokens", "2,6",
          "--quiet", "--auth-token", pki_.token};
  args.insert(args.end(), tls.begin(), tls.end());
  const Run bench = RunBinary(SQUAT_BENCH_BIN, args);
  EXPECT_EQ(bench.exit_code, 0) << bench.out << bench.err;
}

// ---------------------------------------------------------------------------------------
// Misconfigured security flags stop the server at start with a clear message.

class TlsStartupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_.Generate();
    ASSERT_FALSE(HasFailure());
  }
  // Exit code and log of a server that must stop on its own.
  std::pair<int, std::string> RunToExit(const std::vector<std::string>& flags) {
    TlsServer server(flags);
    const std::optional<int> status = server.child().WaitExit(std::chrono::seconds(60));
    return {status.has_value() ? ExitCodeOf(*status) : -1, server.Log()};
  }
  Watchdog watchdog_{"server_tls_test", std::chrono::seconds(150)};
  Pki pki_;
};

TEST_F(TlsStartupTest, TokenWithoutTlsIsAUsageError) {
  const auto [code, log] = RunToExit({"--auth-token-file", pki_.token_file});
  EXPECT_EQ(code, 2) << log;
  EXPECT_TRUE(absl::StrContains(log, "--auth-token-file needs TLS")) << log;
}

TEST_F(TlsStartupTest, ClientCaWithoutServerCertificateIsAUsageError) {
  const auto [code, log] = RunToExit({"--tls-client-ca", pki_.ca});
  EXPECT_EQ(code, 2) << log;
  EXPECT_TRUE(absl::StrContains(log, "--tls-client-ca")) << log;
}

TEST_F(TlsStartupTest, MissingCertificateFileStopsTheServer) {
  const std::string missing = TempPath("missing.pem");
  const auto [code, log] = RunToExit({"--tls-cert", missing, "--tls-key", pki_.server_key});
  EXPECT_EQ(code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "cannot set up transport security")) << log;
  EXPECT_TRUE(absl::StrContains(log, missing)) << log;
}

TEST_F(TlsStartupTest, CertificateGivenAsTheKeyStopsTheServer) {
  const auto [code, log] = RunToExit({"--tls-cert", pki_.server_cert, "--tls-key", pki_.server_cert});
  EXPECT_EQ(code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "holds no PEM PRIVATE KEY block")) << log;
}

TEST_F(TlsStartupTest, EmptyTokenFileStopsTheServer) {
  WriteText(pki_.token_file, " \n");
  const auto [code, log] = RunToExit(
      {"--tls-cert", pki_.server_cert, "--tls-key", pki_.server_key, "--auth-token-file", pki_.token_file});
  EXPECT_EQ(code, 1) << log;
  EXPECT_TRUE(absl::StrContains(log, "is empty")) << log;
}

}  // namespace
