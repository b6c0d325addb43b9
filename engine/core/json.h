// A small JSON reader (RFC 8259) for config.json, safetensors headers, presets and benchmark
// results, and the string quoting the writers need. Errors name the source and the
// line:column of the offending character.
#ifndef MOE_ENGINE_CORE_JSON_H_
#define MOE_ENGINE_CORE_JSON_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  // "null", "boolean", "number", "string", "array", "object": for messages.
  absl::string_view KindName() const;

  // Accessors; each returns a default (false, 0, "", empty) for another kind.
  bool bool_value() const { return kind_ == Kind::kBool && bool_; }
  double number() const { return kind_ == Kind::kNumber ? number_ : 0.0; }
  const std::string& string() const { return string_; }
  const std::vector<JsonValue>& array() const { return array_; }
  // Members in file order; keys are unique (the parser rejects duplicates).
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }
  // The member named `key` of an object, or null if absent (or not an object).
  const JsonValue* Find(absl::string_view key) const;

  // Where the value starts in its source, 1-based.
  int line() const { return line_; }
  int column() const { return column_; }

 private:
  friend class JsonParser;

  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::vector<std::pair<std::string, JsonValue>> members_;
  int line_ = 0;
  int column_ = 0;
};

// Parses one JSON document (surrounding whitespace allowed, nothing else). InvalidArgument
// "<source>:<line>:<column>: <what was expected>" on malformed input, duplicate keys, or
// nesting deeper than 64 levels.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text, absl::string_view source);

// Reads and parses a file; NotFound / PermissionDenied naming the path if it cannot be read.
absl::StatusOr<JsonValue> ReadJsonFile(const std::string& path);

// A whole file as bytes; NotFound / PermissionDenied / DataLoss naming the path.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// `s` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view s);

// A finite double as a JSON number (shortest form that reads back exactly); null if not finite.
std::string JsonNumber(double v);

// A finite double rounded to `digits` significant digits (for measurements); null if not finite.
std::string JsonRounded(double v, int digits);

}  // namespace moe

#endif  // MOE_ENGINE_CORE_JSON_H_
