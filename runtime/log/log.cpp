#include "runtime/log/log.h"

#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <ctime>
#include <nlohmann/json.hpp>

namespace squat::log {
namespace {

// The fields of the line being logged on this thread. The logger is synchronous, so its
// formatter runs inside the spdlog call on the caller's thread and can read them here.
thread_local const Fields* current_fields = nullptr;
std::atomic<Format> configured_format{Format::kText};

bool NeedsQuotes(const std::string& value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\n' || c == '\t') return true;
  }
  return false;
}

std::string QuoteText(const std::string& value) {
  std::string quoted = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') quoted += '\\';
    if (c == '\n') {
      quoted += "\\n";
      continue;
    }
    quoted += c;
  }
  return quoted + "\"";
}

std::string TextValue(const Field::Value& value) {
  if (const auto* s = std::get_if<std::string>(&value)) return NeedsQuotes(*s) ? QuoteText(*s) : *s;
  if (const auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return fmt::format("{:.4f}", *d);
  return std::get<bool>(value) ? "true" : "false";
}

// RFC 3339 UTC with milliseconds: 2025-01-31T12:34:56.789Z.
std::string Rfc3339(spdlog::log_clock::time_point time) {
  const auto since_epoch = time.time_since_epoch();
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds);
  const std::time_t t = static_cast<std::time_t>(seconds.count());
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buffer[40];
  const size_t n = std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03d}Z", std::string(buffer, n), static_cast<int>(millis.count()));
}

// One JSON object per line: time, level, msg, then the line's structured fields.
class JsonLineFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json line;
    line["time"] = Rfc3339(msg.time);
    const auto level = spdlog::level::to_string_view(msg.level);
    line["level"] = std::string(level.data(), level.size());
    line["msg"] = std::string(msg.payload.data(), msg.payload.size());
    if (current_fields != nullptr) {
      for (const Field& field : *current_fields) {
        std::visit([&](const auto& value) { line[field.key()] = value; }, field.value());
      }
    }
    // Invalid UTF-8 (say, from a client's prompt in an error message) must not break the line.
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonLineFormatter>();
  }
};

void Log(spdlog::level::level_enum level, const std::string& message, const Fields& fields) {
  if (!spdlog::should_log(level)) return;
  if (fields.empty()) {
    spdlog::log(level, "{}", message);
    return;
  }
  // Text lines carry the fields in the message; JSON lines take them from current_fields.
  if (configured_format.load() == Format::kText) {
    spdlog::log(level, "{}", RenderText(message, fields));
    return;
  }
  current_fields = &fields;
  spdlog::log(level, "{}", message);
  current_fields = nullptr;
}

}  // namespace

bool ParseFormat(const std::string& name, Format* format) {
  if (name == "text") {
    *format = Format::kText;
    return true;
  }
  if (name == "json") {
    *format = Format::kJson;
    return true;
  }
  return false;
}

std::string RenderText(const std::string& message, const Fields& fields) {
  std::string text;
  for (const Field& field : fields) {
    if (field.key() == kRequestIdKey) {
      text = "[" + TextValue(field.value()) + "] ";
      break;
    }
  }
  text += message;
  for (const Field& field : fields) {
    if (field.key() == kRequestIdKey) continue;
    text += " " + field.key() + "=" + TextValue(field.value());
  }
  return text;
}

void Configure(Format format, const std::string& level) {
  std::shared_ptr<spdlog::logger> logger;
  if (format == Format::kJson) {
    logger = std::make_shared<spdlog::logger>("squat", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_formatter(std::make_unique<JsonLineFormatter>());
  } else {
    logger = std::make_shared<spdlog::logger>("squat",
                                              std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  }
  configured_format.store(format);
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

void Debug(const std::string& message, const Fields& fields) {
  Log(spdlog::level::debug, message, fields);
}
void Info(const std::string& message, const Fields& fields) {
  Log(spdlog::level::info, message, fields);
}
void Warn(const std::string& message, const Fields& fields) {
  Log(spdlog::level::warn, message, fields);
}
void Error(const std::string& message, const Fields& fields) {
  Log(spdlog::level::err, message, fields);
}

}  // namespace squat::log
