#include "runtime/engine/output_processor.h"

#include <algorithm>
#include <utility>

namespace squat {
namespace {

double SecondsSince(EngineClock::time_point start) {
  return std::chrono::duration<double>(EngineClock::now() - start).count();
}

// What sampling needs from the step's logits: plain greedy sequences take the argmax on the
// device, the others their whole row on the host, so that a large greedy batch moves a few bytes
// per sequence over PCIe instead of a vocabulary row.
struct SampledRows {
  at::Tensor host;                // rows of the sequences that sample on the host
  float* rows = nullptr;
  int32_t vocab = 0;
  std::vector<int64_t> host_row;  // per chunk: its row in `host`, or -1 (argmax)
  std::vector<int32_t> argmax;    // per chunk, valid where host_row is -1
};

SampledRows CopyForSampling(const at::Tensor& logits, const std::vector<ScheduledChunk>& chunks) {
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
      rows = logits.index_select(0, at::tensor(host_rows, at::TensorOptions().dtype(at::kLong)).to(logits.device()));
    }
    out.host = rows.to(at::kCPU, at::kFloat).contiguous();
    out.rows = out.host.data_ptr<float>();
  }
  return out;
}

}  // namespace

OutputProcessor::OutputProcessor(std::vector<int32_t> eos_ids)
    : eos_ids_(eos_ids.begin(), eos_ids.end()), eos_list_(std::move(eos_ids)) {}

std::vector<OutputProcessor::Ended> OutputProcessor::Process(const at::Tensor& logits,
                                                             const std::vector<ScheduledChunk>& chunks) {
  const SampledRows sampled = CopyForSampling(logits, chunks);
  std::vector<Ended> ended;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ScheduledChunk& chunk = chunks[i];
    if (!chunk.samples) continue;  // mid-prompt or replaying generated tokens
    Sampler& sampler = *chunk.seq->sampler;
    const int64_t host_row = sampled.host_row[i];
    const SampledToken token = host_row < 0 ? sampler.AcceptArgmax(sampled.argmax[i])
                                            : sampler.Sample(sampled.rows + host_row * sampled.vocab, sampled.vocab);
    const FinishReason reason = Accept(*chunk.seq, token);
    if (reason != FinishReason::kNone) ended.push_back({chunk.seq, reason});
  }
  return ended;
}

FinishReason OutputProcessor::Accept(Sequence& seq, const SampledToken& token) const {
  const auto& sampling = seq.request.sampling;
  if (seq.generated() == 0) {  // the first token (a recomputation replays the ones it had)
    seq.timings.time_to_first_token_seconds = SecondsSince(seq.submitted);
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
  event.time_seconds = SecondsSince(seq.submitted);
  seq.stream->Push(std::move(event));
  if (seq.stops->stopped()) return FinishReason::kStop;
  if (seq.generated() >= seq.max_new_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

void OutputProcessor::SendFinal(Sequence& seq, FinishReason reason, const std::string& error) const {
  GenerationEvent last;
  if (reason == FinishReason::kLength || reason == FinishReason::kEos) {
    last.text = seq.stops->Append(seq.decoder->Flush());
    if (!seq.stops->stopped()) {
      last.text += seq.stops->Flush();
    } else {
      reason = FinishReason::kStop;
    }
  }
  last.finished = true;
  last.finish_reason = reason;
  last.error_message = error;
  last.prompt_tokens = static_cast<int32_t>(seq.prompt_len);
  last.completion_tokens = static_cast<int32_t>(seq.generated());
  last.timings = seq.timings;
  last.timings.total_seconds = SecondsSince(seq.submitted);
  last.time_seconds = last.timings.total_seconds;
  seq.stream->Push(std::move(last));
}

}  // namespace squat
