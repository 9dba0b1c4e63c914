// squat-eval: quality of the KV-cache formats on a Hugging Face checkpoint (see EvalUsage()).
#include <ATen/Parallel.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/model/llama_model.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tools/eval/eval_options.h"
#include "tools/eval/formats.h"
#include "tools/eval/needle.h"
#include "tools/eval/perplexity.h"
#include "tools/eval/report.h"
#include "tools/eval/windows.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "squat-eval: error: " << message << "\n";
  return 1;
}

void Progress(const std::string& line) { std::cerr << line << std::endl; }

}  // namespace

int main(int argc, char** argv) {
  using namespace squat;
  using namespace squat::eval;
  const auto start = std::chrono::steady_clock::now();
  auto options = ParseEvalOptions(argc, argv);
  if (!options.ok()) {
    if (absl::IsNotFound(options.status())) {
      std::cout << options.status().message();
      return 0;
    }
    std::cerr << "squat-eval: " << options.status().message() << "\n\n" << EvalUsage();
    return 2;
  }
  const EvalOptions& o = *options;
  if (o.threads > 0) at::set_num_threads(o.threads);

  auto config = LoadModelConfig(o.model_dir + "/config.json");
  if (!config.ok()) return Fail(config.status().ToString());
  auto tokenizer = Tokenizer::FromFile(o.model_dir + "/tokenizer.json");
  if (!tokenizer.ok()) return Fail(tokenizer.status().ToString());
  auto checkpoint = CheckpointReader::Open(o.model_dir);
  if (!checkpoint.ok()) return Fail(checkpoint.status().ToString());
  ModelLoadOptions load;
  load.device = o.device;
  load.dtype = o.dtype;
  auto model = LlamaModel::Load(**checkpoint, *config, load);
  if (!model.ok()) return Fail(model.status().ToString());

  std::ifstream text_file(o.text_path, std::ios::binary);
  if (!text_file) return Fail("cannot read --text " + o.text_path);
  std::stringstream text;
  text << text_file.rdbuf();
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text.str(), /*add_special_tokens=*/false);
  std::vector<int64_t> bos;
  if (config->bos_token_id) {
    // Windows start as the tokenizer starts a text: with BOS when its post-processor adds it.
    const std::vector<int32_t> probe = (*tokenizer)->Encode("a", /*add_special_tokens=*/true);
    if (!probe.empty() && probe[0] == *config->bos_token_id) bos.push_back(*config->bos_token_id);
  }

  auto formats = BuildFormats(o, config->head_dim);
  if (!formats.ok()) return Fail(formats.status().ToString());
  RunInfo info;
  info.command = absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ");
  info.model_dir = o.model_dir;
  info.text_path = o.text_path;
  info.device = o.device;
  info.dtype = c10::toString((*model)->dtype());
  info.layers = config->num_hidden_layers;
  info.heads = config->num_attention_heads;
  info.kv_heads = config->num_key_value_heads;
  info.head_dim = config->head_dim;
  info.vocab = config->vocab_size;
  info.text_tokens = static_cast<int64_t>(ids.size());
  info.settings = DescribeSettings(o, config->head_dim);
  std::vector<std::string> labels;
  for (const EvalFormat& f : *formats) labels.push_back(f.label);
  std::cerr << "squat-eval: " << info.text_tokens << " text tokens" << (bos.empty() ? "" : " (windows start with BOS)")
            << "; formats " << absl::StrJoin(labels, ", ") << "; KV settings: " << info.settings << std::endl;

  PerplexityInputs inputs;
  inputs.text_tokens.assign(ids.begin(), ids.end());
  inputs.bos = bos;
  inputs.formats = *formats;
  inputs.isolated_attention = o.isolated_attention;
  inputs.lambda = o.lambda;
  inputs.subspace_dim = o.subspace_dim;
  std::vector<ContextResult> contexts;
  for (size_t c = 0; c < o.contexts.size(); ++c) {
    const int64_t context = o.contexts[c];
    if (context > config->max_position_embeddings) {
      std::cerr << "squat-eval: skipping context " << context << ": the model's max_position_embeddings is "
                << config->max_position_embeddings << std::endl;
      continue;
    }
    const WindowPlan plan = PlanWindows(static_cast<int64_t>(ids.size()), context, static_cast<int64_t>(bos.size()),
                                        o.prefix_fraction, MaxWindowsFor(o, c));
    if (plan.starts.empty()) {
      std::cerr << "squat-eval: skipping context " << context << ": the text holds no whole window" << std::endl;
      continue;
    }
    auto result = EvaluatePerplexity(**model, inputs, plan, Progress);
    if (!result.ok()) return Fail(result.status().ToString());
    contexts.push_back(*std::move(result));
  }

  NeedleResult needle;
  bool have_needle = false;
  NeedleInputs needle_inputs;
  needle_inputs.text_tokens = inputs.text_tokens;
  needle_inputs.bos = bos;
  needle_inputs.formats = *formats;
  for (int64_t context : o.needle_contexts) {
    if (context <= config->max_position_embeddings) {
      needle_inputs.contexts.push_back(context);
    } else {
      std::cerr << "squat-eval: skipping needle context " << context << " (max_position_embeddings "
                << config->max_position_embeddings << ")" << std::endl;
    }
  }
  needle_inputs.depths = o.needle_depths;
  needle_inputs.trials = o.needle_trials;
  needle_inputs.seed = o.seed;
  if (!needle_inputs.contexts.empty() && !needle_inputs.depths.empty()) {
    auto result = RunNeedle(**model, **tokenizer, needle_inputs, Progress);
    if (!result.ok()) return Fail(result.status().ToString());
    needle = *std::move(result);
    have_needle = true;
  }

  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  PrintReport(std::cout, info, contexts, have_needle ? &needle : nullptr);
  if (!o.json_path.empty()) {
    if (absl::Status s = WriteJson(o.json_path, info, contexts, have_needle ? &needle : nullptr); !s.ok()) {
      return Fail(s.ToString());
    }
  }
  return 0;
}
