// Small helpers for reading tokenizer.json sections with errors that name the field
// (private to squat_tokenizer).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace squat::tokenizer_internal {

using Json = nlohmann::json;

// absl here has its own string_view type, so std::string_view goes in through this.
inline absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

inline absl::Status SpecError(std::string_view where, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: ", AsAbsl(where), ": ", AsAbsl(what)));
}

// The member `key` of `object`, or nullptr when it is absent or null.
inline const Json* OptionalField(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

inline absl::StatusOr<std::string> StringField(const Json& object, const char* key,
                                               std::string_view where) {
  const Json* field = OptionalField(object, key);
  if (field == nullptr || !field->is_string()) {
    return SpecError(where, absl::StrCat("'", key, "' must be a string"));
  }
  return field->get<std::string>();
}

inline absl::StatusOr<bool> BoolField(const Json& object, const char* key, bool fallback,
                                      std::string_view where) {
  const Json* field = OptionalField(object, key);
  if (field == nullptr) return fallback;
  if (!field->is_boolean()) return SpecError(where, absl::StrCat("'", key, "' must be a boolean"));
  return field->get<bool>();
}

inline absl::StatusOr<std::string> TypeOf(const Json& spec, std::string_view where) {
  if (!spec.is_object()) return SpecError(where, "must be an object or null");
  return StringField(spec, "type", where);
}

}  // namespace squat::tokenizer_internal
