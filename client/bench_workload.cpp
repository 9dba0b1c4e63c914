#include "client/bench_workload.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>

#include "absl/strings/str_join.h"

namespace squat::bench {
namespace {

// Common English words: most are one token in a byte-level BPE vocabulary.
constexpr const char* kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "was",   "for",   "on",    "with",
    "as",    "by",    "at",    "from",  "this",  "that",  "which", "or",    "an",    "are",
    "time",  "year",  "people", "way",  "day",   "man",   "thing", "world", "life",  "hand",
    "part",  "child", "eye",   "place", "work",  "week",  "case",  "point", "number", "group",
    "river", "stone", "light", "music", "water", "house", "city",  "night", "tree",  "road"};

int64_t Uniform(std::mt19937_64& rng, const IntRange& range) {
  return std::uniform_int_distribution<int64_t>(range.min, range.max)(rng);
}

std::vector<int32_t> RandomIds(std::mt19937_64& rng, int64_t count, const ModelFacts& model) {
  std::uniform_int_distribution<int32_t> id(0, model.vocab_size - 1);
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(count));
  while (static_cast<int64_t>(ids.size()) < count) {
    const int32_t candidate = id(rng);
    if (std::find(model.eos_token_ids.begin(), model.eos_token_ids.end(), candidate) ==
        model.eos_token_ids.end()) {
      ids.push_back(candidate);
    }
  }
  return ids;
}

std::string RandomWords(std::mt19937_64& rng, int64_t count) {
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::vector<const char*> words;
  for (int64_t i = 0; i < count; ++i) words.push_back(kWords[pick(rng)]);
  return absl::StrJoin(words, " ");
}

}  // namespace

std::vector<RequestSpec> MakeWorkload(const BenchOptions& options, const ModelFacts& model) {
  std::vector<RequestSpec> specs(static_cast<size_t>(options.requests));
  for (size_t i = 0; i < specs.size(); ++i) {
    // One generator per request: request i is the same whatever --requests is.
    std::seed_seq seq{static_cast<uint32_t>(options.seed), static_cast<uint32_t>(options.seed >> 32),
                      static_cast<uint32_t>(i), 0x5157u};
    std::mt19937_64 rng(seq);
    RequestSpec& spec = specs[i];
    spec.index = static_cast<int64_t>(i);
    spec.prompt_tokens = Uniform(rng, options.prompt_tokens);
    if (options.prompt_source == PromptSource::kTokenIds) {
      spec.prompt_ids = RandomIds(rng, spec.prompt_tokens, model);
    } else {
      spec.prompt_text = RandomWords(rng, spec.prompt_tokens);
    }
    spec.max_tokens = Uniform(rng, options.max_tokens);
    if (!options.kv_methods.empty()) {
      spec.kv_method = options.kv_methods[std::uniform_int_distribution<size_t>(
          0, options.kv_methods.size() - 1)(rng)];
    }
    spec.sampling_seed = rng() >> 1;  // proto field is uint64; keep it printable as int64 too
  }

  std::mt19937_64 run_rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<RequestSpec*> cancellable;
  for (RequestSpec& spec : specs) {
    if (spec.max_tokens >= 2) cancellable.push_back(&spec);
  }
  std::shuffle(cancellable.begin(), cancellable.end(), run_rng);
  const size_t cancel_count = std::min(
      cancellable.size(),
      static_cast<size_t>(std::llround(options.cancel_fraction * static_cast<double>(specs.size()))));
  for (size_t i = 0; i < cancel_count; ++i) {
    RequestSpec& spec = *cancellable[i];
    spec.cancel_after_tokens =
        std::uniform_int_distribution<int64_t>(1, spec.max_tokens - 1)(run_rng);
  }

  if (options.rate > 0) {
    // Poisson process: exponential gaps with mean 1/rate.
    std::exponential_distribution<double> gap(options.rate);
    double t = 0;
    for (RequestSpec& spec : specs) {
      t += gap(run_rng);
      spec.arrival_s = t;
    }
  }
  return specs;
}

}  // namespace squat::bench
