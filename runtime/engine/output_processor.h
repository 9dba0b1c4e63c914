// After a step's forward pass (vLLM v1's output processor, in our terms): each sequence whose
// chunk ends at its newest token gets its next token from the step's logits (a device argmax
// for plain greedy sampling, the host row otherwise), the token is streamed as text, and the
// processor says which sequences end and why. It also writes a sequence's final event. Engine
// thread only; internal to runtime/ (includes ATen).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "runtime/engine/engine.h"
#include "runtime/engine/scheduler.h"
#include "runtime/engine/sequence.h"

namespace squat {

class OutputProcessor {
 public:
  explicit OutputProcessor(std::vector<int32_t> eos_ids);

  struct Ended {
    const Sequence* seq = nullptr;
    FinishReason reason = FinishReason::kNone;
  };
  // `logits` [chunks, vocab] (float32, on the model's device): one row per chunk of the step.
  // Streams every sampled token; returns the sequences that ended with it (eos, a stop, length).
  std::vector<Ended> Process(const at::Tensor& logits, const std::vector<ScheduledChunk>& chunks);

  // The final event of a finished sequence (its pages already freed): the text its decoder and
  // stop matcher still hold, usage and timings.
  void SendFinal(Sequence& seq, FinishReason reason, const std::string& error) const;

  const std::vector<int32_t>& eos_ids() const { return eos_list_; }

 private:
  // Streams a sampled token; returns why the sequence ends, or kNone.
  FinishReason Accept(Sequence& seq, const SampledToken& token) const;

  const std::unordered_set<int32_t> eos_ids_;
  const std::vector<int32_t> eos_list_;
};

}  // namespace squat
