#include "client/bench_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "squat/v1/generation.grpc.pb.h"

namespace squat::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

v1::GenerateRequest BuildRequest(const BenchOptions& options, const RequestSpec& spec) {
  v1::GenerateRequest request;
  if (options.prompt_source == PromptSource::kTokenIds) {
    request.mutable_token_ids()->mutable_ids()->Add(spec.prompt_ids.begin(), spec.prompt_ids.end());
  } else {
    request.set_text(spec.prompt_text);
  }
  request.set_request_id(absl::StrCat("bench-", options.seed, "-", spec.index));
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_max_tokens(static_cast<uint32_t>(spec.max_tokens));
  sampling->set_temperature(options.temperature);
  sampling->set_seed(spec.sampling_seed);
  sampling->set_ignore_eos(options.ignore_eos);
  v1::KvCacheConfig* kv = request.mutable_kv_cache();
  kv->set_method(spec.kv_method);
  kv->set_k_bits(options.k_bits);
  kv->set_v_bits(options.v_bits);
  return request;
}

std::string FinishReasonName(v1::FinishReason reason) {
  return absl::AsciiStrToLower(absl::StripPrefix(v1::FinishReason_Name(reason), "FINISH_REASON_"));
}

// Why an OK stream broke the API's contract, or "" when it kept it.
std::string StreamViolation(const BenchOptions& options, const RequestSpec& spec,
                            const RequestRecord& record, int64_t final_chunks,
                            bool final_chunk_was_last) {
  if (final_chunks != 1 || !final_chunk_was_last) {
    return absl::StrCat(final_chunks, " chunks carried a finish_reason; want exactly one, the last");
  }
  if (record.usage_completion_tokens != record.tokens_received) {
    return absl::StrCat("usage.completion_tokens=", record.usage_completion_tokens, " but ",
                        record.tokens_received, " tokens arrived");
  }
  if (record.tokens_received > spec.max_tokens) {
    return absl::StrCat(record.tokens_received, " tokens arrived for max_tokens=", spec.max_tokens);
  }
  if (options.prompt_source == PromptSource::kTokenIds &&
      record.usage_prompt_tokens != static_cast<int64_t>(spec.prompt_ids.size())) {
    return absl::StrCat("usage.prompt_tokens=", record.usage_prompt_tokens, " for a prompt of ",
                        spec.prompt_ids.size(), " token ids");
  }
  return "";
}

RequestRecord RunOne(const BenchOptions& options, const RequestSpec& spec,
                     v1::GenerationService::Stub& stub, Clock::time_point run_start) {
  RequestRecord record;
  record.index = spec.index;
  const v1::GenerateRequest request = BuildRequest(options, spec);
  record.request_id = request.request_id();
  record.kv_method = spec.kv_method;
  record.max_tokens = spec.max_tokens;
  record.cancel_after_tokens = spec.cancel_after_tokens;
  record.scheduled_s = spec.arrival_s;

  grpc::ClientContext context;
  const Clock::time_point sent = Clock::now();
  if (options.timeout_s > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::duration_cast<std::chrono::system_clock::duration>(
                             std::chrono::duration<double>(options.timeout_s)));
  }
  record.start_s = SecondsBetween(run_start, sent);
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
      stub.GenerateStream(&context, request);

  v1::GenerateStreamResponse chunk;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  int64_t final_chunks = 0;
  bool final_chunk_was_last = false;
  Clock::time_point last_token_at;
  while (reader->Read(&chunk)) {
    const Clock::time_point now = Clock::now();
    // After our cancel, chunks already in flight still count for the stream's checks (the
    // server may have finished first) but no longer for latencies.
    const bool timed = !record.cancel_sent;
    ++record.chunks;
    final_chunk_was_last = false;
    const int64_t tokens = chunk.token_ids_size();
    if (tokens > 0) {
      if (record.tokens_received == 0) {
        record.ttft_s = SecondsBetween(sent, now);
      } else if (timed) {
        const double per_token = SecondsBetween(last_token_at, now) / static_cast<double>(tokens);
        record.itl_s.insert(record.itl_s.end(), static_cast<size_t>(tokens), per_token);
      }
      if (timed) {
        last_token_at = now;
        record.last_token_s = SecondsBetween(sent, now);
      }
      record.tokens_received += tokens;
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      ++final_chunks;
      final_chunk_was_last = true;
      finish_reason = chunk.finish_reason();
      record.usage_prompt_tokens = chunk.usage().prompt_tokens();
      record.usage_completion_tokens = chunk.usage().completion_tokens();
    }
    if (spec.cancel_after_tokens > 0 && !record.cancel_sent && final_chunks == 0 &&
        record.tokens_received >= spec.cancel_after_tokens) {
      context.TryCancel();
      record.cancel_sent = true;
    }
  }
  const grpc::Status status = reader->Finish();
  record.e2e_s = SecondsBetween(sent, Clock::now());

  // A server may end our cancelled stream with OK and finish_reason=cancelled; its usage
  // then counts tokens we never read, so the stream checks do not apply.
  if (status.ok() && finish_reason == v1::FINISH_REASON_CANCELLED && record.cancel_sent) {
    record.outcome = "cancelled_by_client";
  } else if (status.ok()) {
    const std::string violation =
        StreamViolation(options, spec, record, final_chunks, final_chunk_was_last);
    if (!violation.empty()) {
      record.outcome = "invalid_stream";
      record.unexpected = true;
      record.message = violation;
    } else {
      record.outcome = absl::StrCat("ok:", FinishReasonName(finish_reason));
      record.unexpected = finish_reason != v1::FINISH_REASON_LENGTH &&
                          finish_reason != v1::FINISH_REASON_STOP &&
                          finish_reason != v1::FINISH_REASON_EOS;
      if (finish_reason == v1::FINISH_REASON_LENGTH && record.tokens_received != spec.max_tokens) {
        record.outcome = "invalid_stream";
        record.unexpected = true;
        record.message = absl::StrCat("finish_reason=length after ", record.tokens_received,
                                      " tokens; max_tokens=", spec.max_tokens);
      }
    }
  } else if (status.error_code() == grpc::StatusCode::CANCELLED && record.cancel_sent) {
    record.outcome = "cancelled_by_client";
  } else {
    // gRPC and absl share the canonical code numbering.
    record.outcome = absl::StrCat(
        "error:", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())));
    record.unexpected = true;
    record.message = status.error_message();
  }
  return record;
}

}  // namespace

RunResult RunWorkload(const BenchOptions& options, const std::vector<RequestSpec>& specs) {
  RunResult result;
  result.records.resize(specs.size());
  // FetchModelInfo already built this channel once, so its files are readable.
  const std::shared_ptr<grpc::Channel> channel =
      client::CreateClientChannel(options.address, options.security).value();
  std::unique_ptr<v1::GenerationService::Stub> stub = v1::GenerationService::NewStub(channel);

  // Each worker takes the next request in order and, in open loop, waits for its arrival
  // time; a request whose time came while every worker was busy goes out at once.
  std::atomic<size_t> next{0};
  std::atomic<int64_t> last_end_ns{0};
  const Clock::time_point run_start = Clock::now();
  auto worker = [&] {
    for (size_t i = next++; i < specs.size(); i = next++) {
      const RequestSpec& spec = specs[i];
      if (options.rate > 0) {
        std::this_thread::sleep_until(run_start + std::chrono::duration_cast<Clock::duration>(
                                                      std::chrono::duration<double>(spec.arrival_s)));
      }
      result.records[i] = RunOne(options, spec, *stub, run_start);
      const int64_t end_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - run_start).count();
      int64_t seen = last_end_ns.load();
      while (end_ns > seen && !last_end_ns.compare_exchange_weak(seen, end_ns)) {
      }
    }
  };
  const size_t thread_count =
      std::min(specs.size(), static_cast<size_t>(std::max<int64_t>(1, options.concurrency)));
  std::vector<std::thread> threads;
  threads.reserve(thread_count);
  for (size_t t = 0; t < thread_count; ++t) threads.emplace_back(worker);
  for (std::thread& thread : threads) thread.join();
  result.duration_s = static_cast<double>(last_end_ns.load()) * 1e-9;
  return result;
}

}  // namespace squat::bench
