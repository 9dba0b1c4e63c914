#include "runtime/log.h"

#include <spdlog/spdlog.h>

namespace squat::log {

void Info(const std::string& message) { spdlog::info("{}", message); }
void Warn(const std::string& message) { spdlog::warn("{}", message); }
void Error(const std::string& message) { spdlog::error("{}", message); }

}  // namespace squat::log
