// squat-eval's output: markdown tables on stdout and the full numbers as JSON (torch-free).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tools/eval/needle.h"
#include "tools/eval/perplexity.h"

namespace squat::eval {

struct RunInfo {
  std::string command;
  std::string model_dir, text_path, device, dtype;
  int64_t layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  int64_t text_tokens = 0;
  std::string settings;  // DescribeSettings
  double seconds = 0;
};

void PrintReport(std::ostream& out, const RunInfo& info, const std::vector<ContextResult>& contexts,
                 const NeedleResult* needle);
absl::Status WriteJson(const std::string& path, const RunInfo& info, const std::vector<ContextResult>& contexts,
                       const NeedleResult* needle);

}  // namespace squat::eval
