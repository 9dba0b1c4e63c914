// Reading a request's events off the engine (runtime/engine/engine.h) in tests: everything a stream
// delivered until its final event. Torch-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/engine/engine.h"

namespace squat::testing_support {

struct DrainedStream {
  std::vector<GenerationEvent> events;  // in order, the final one last
  std::vector<int32_t> ids;             // every event's tokens, concatenated
  std::vector<float> logprobs;
  std::string text;
  GenerationEvent last;  // the final event (default-constructed if none came)
};

// Events until the final one. A stream silent for `timeout` fails the test and returns what
// came so far (a hung engine must not hang the test).
inline DrainedStream DrainStream(RequestStream& stream,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  DrainedStream out;
  GenerationEvent event;
  while (stream.Next(&event, timeout)) {
    out.events.push_back(event);
    out.ids.insert(out.ids.end(), event.token_ids.begin(), event.token_ids.end());
    out.logprobs.insert(out.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
    out.text += event.text;
    if (event.finished) {
      out.last = event;
      return out;
    }
  }
  ADD_FAILURE() << "engine produced no event for " << std::chrono::duration<double>(timeout).count() << " s";
  return out;
}

}  // namespace squat::testing_support
