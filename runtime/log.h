// Logging for runtime/ translation units that include torch: torch bundles its own fmt, which
// clashes with spdlog's fmt in the same translation unit (seen with LibTorch 2.11 and spdlog
// 1.12 on the GPU machine), so those files log through this torch-free shim.
#pragma once

#include <string>

namespace squat::log {

void Info(const std::string& message);
void Warn(const std::string& message);
void Error(const std::string& message);

}  // namespace squat::log
