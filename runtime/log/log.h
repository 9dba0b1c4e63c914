// Logging for the whole program through one torch-free shim. Torch bundles its own fmt, which
// clashes with spdlog's fmt in the same translation unit (seen with LibTorch 2.11 and spdlog
// 1.12 on the GPU machine), so translation units that include torch log only through here.
//
// A line is a message plus optional structured fields. Text format: "[<request_id>] message
// key=value ..." after the time and level; JSON format: one object per line with "time",
// "level", "msg" and the fields as members, so log pipelines need no parsing rules.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace squat::log {

enum class Format { kText, kJson };

// "text" or "json"; false for anything else.
bool ParseFormat(const std::string& name, Format* format);

// One structured field of a line: a string, integer, floating-point or boolean value.
class Field {
 public:
  using Value = std::variant<std::string, int64_t, double, bool>;

  Field(std::string key, std::string value) : key_(std::move(key)), value_(std::move(value)) {}
  Field(std::string key, const char* value) : key_(std::move(key)), value_(std::string(value)) {}
  Field(std::string key, double value) : key_(std::move(key)), value_(value) {}
  Field(std::string key, bool value) : key_(std::move(key)), value_(value) {}
  template <typename Int,
            std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool>, int> = 0>
  Field(std::string key, Int value) : key_(std::move(key)), value_(static_cast<int64_t>(value)) {}

  const std::string& key() const { return key_; }
  const Value& value() const { return value_; }

 private:
  std::string key_;
  Value value_;
};
using Fields = std::vector<Field>;

// The field that names a request: text lines show it first as "[id]".
inline constexpr char kRequestIdKey[] = "request_id";

// Sends every later line to stderr in `format` at `level` (trace, debug, info, warn, error,
// critical, off). Lines logged through spdlog directly are formatted the same way. Without a
// call, spdlog's default logger prints text.
void Configure(Format format, const std::string& level);

void Debug(const std::string& message, const Fields& fields = {});
void Info(const std::string& message, const Fields& fields = {});
void Warn(const std::string& message, const Fields& fields = {});
void Error(const std::string& message, const Fields& fields = {});

// The message part of a text line: "[<request_id>] message key=value ..." (strings with
// spaces, quotes or '=' are quoted; doubles with 4 decimals).
std::string RenderText(const std::string& message, const Fields& fields);

}  // namespace squat::log
