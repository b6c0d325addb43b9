#include "tools/generate_jsonl.h"

#include <cfloat>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/core/json.h"

namespace moe::tools {
namespace {

constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
constexpr double kMaxTokenId = std::numeric_limits<int32_t>::max();
constexpr const char* kFieldList =
    "id, prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, "
    "stop_token_ids, ignore_eos, logprobs";

// What a value is, for messages: numbers and booleans by value, the rest by kind.
std::string Describe(const JsonValue& v) {
  switch (v.kind()) {
    case JsonValue::Kind::kNumber:
      return JsonNumber(v.number());
    case JsonValue::Kind::kBool:
      return v.bool_value() ? "true" : "false";
    default:
      return std::string(v.KindName());
  }
}

absl::Status BadValue(int64_t line_no, absl::string_view field, absl::string_view want,
                      const JsonValue& got) {
  return absl::InvalidArgumentError(
      absl::StrCat("line ", line_no, ": ", field, " must be ", want, ", got ", Describe(got)));
}

bool IsIntegerIn(const JsonValue& v, double lo, double hi) {
  return v.kind() == JsonValue::Kind::kNumber && std::trunc(v.number()) == v.number() &&
         v.number() >= lo && v.number() <= hi;
}

absl::Status ReadInt64(const JsonValue& v, int64_t line_no, absl::string_view field, int64_t* out) {
  if (!IsIntegerIn(v, -kMaxExactInteger, kMaxExactInteger)) {
    return BadValue(line_no, absl::StrCat("\"", field, "\""), "an integer", v);
  }
  *out = static_cast<int64_t>(v.number());
  return absl::OkStatus();
}

absl::Status ReadInt32(const JsonValue& v, int64_t line_no, absl::string_view field, int32_t* out) {
  if (!IsIntegerIn(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max())) {
    return BadValue(line_no, absl::StrCat("\"", field, "\""),
                    "an integer in [-2147483648, 2147483647]", v);
  }
  *out = static_cast<int32_t>(v.number());
  return absl::OkStatus();
}

absl::Status ReadSeed(const JsonValue& v, int64_t line_no, uint64_t* out) {
  if (!IsIntegerIn(v, 0, kMaxExactInteger)) {
    return BadValue(line_no, "\"seed\"", "an integer in [0, 9007199254740992]", v);
  }
  *out = static_cast<uint64_t>(v.number());
  return absl::OkStatus();
}

absl::Status ReadFloat(const JsonValue& v, int64_t line_no, absl::string_view field, float* out) {
  if (v.kind() != JsonValue::Kind::kNumber || std::fabs(v.number()) > FLT_MAX) {
    return BadValue(line_no, absl::StrCat("\"", field, "\""), "a number within float range", v);
  }
  *out = static_cast<float>(v.number());
  return absl::OkStatus();
}

absl::Status ReadBool(const JsonValue& v, int64_t line_no, absl::string_view field, bool* out) {
  if (v.kind() != JsonValue::Kind::kBool) {
    return BadValue(line_no, absl::StrCat("\"", field, "\""), "true or false", v);
  }
  *out = v.bool_value();
  return absl::OkStatus();
}

absl::Status ReadTokenIds(const JsonValue& v, int64_t line_no, absl::string_view field,
                          std::vector<int32_t>* out) {
  if (v.kind() != JsonValue::Kind::kArray) {
    return BadValue(line_no, absl::StrCat("\"", field, "\""), "an array of token ids", v);
  }
  out->clear();
  for (size_t i = 0; i < v.array().size(); ++i) {
    const JsonValue& item = v.array()[i];
    if (!IsIntegerIn(item, 0, kMaxTokenId)) {
      return BadValue(line_no, absl::StrCat("\"", field, "\"[", i, "]"),
                      "a token id (an integer in [0, 2147483647])", item);
    }
    out->push_back(static_cast<int32_t>(item.number()));
  }
  return absl::OkStatus();
}

bool IsIdKind(const JsonValue& v) {
  return v.kind() == JsonValue::Kind::kString || v.kind() == JsonValue::Kind::kNumber;
}

std::string IdJson(const JsonValue& v) {
  return v.kind() == JsonValue::Kind::kString ? JsonQuote(v.string()) : JsonNumber(v.number());
}

// ParseJson reports "<source>:<line>:<column>: <what>"; a JSONL line is one line, so with an
// empty source the message is ":1:<column>: <what>".
absl::Status InvalidJson(const absl::Status& status, int64_t line_no) {
  absl::string_view message = status.message();
  if (absl::ConsumePrefix(&message, ":1:")) {
    const size_t colon = message.find(": ");
    if (colon != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": invalid JSON at column ",
                                                     message.substr(0, colon),
                                                     message.substr(colon)));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": invalid JSON: ", message));
}

absl::Status ReadField(const std::string& name, const JsonValue& v, int64_t line_no,
                       ParsedLine* out) {
  LineRequest& r = out->request;
  if (name == "id") {
    if (!IsIdKind(v)) return BadValue(line_no, "\"id\"", "a string or a number", v);
    out->id_json = IdJson(v);
    return absl::OkStatus();
  }
  if (name == "prompt") return ReadTokenIds(v, line_no, name, &r.prompt);
  if (name == "max_new_tokens") return ReadInt64(v, line_no, name, &r.max_new_tokens);
  if (name == "temperature") return ReadFloat(v, line_no, name, &r.temperature);
  if (name == "top_k") return ReadInt32(v, line_no, name, &r.top_k);
  if (name == "top_p") return ReadFloat(v, line_no, name, &r.top_p);
  if (name == "min_p") return ReadFloat(v, line_no, name, &r.min_p);
  if (name == "repetition_penalty") return ReadFloat(v, line_no, name, &r.repetition_penalty);
  if (name == "seed") return ReadSeed(v, line_no, &r.seed);
  if (name == "stop_token_ids") return ReadTokenIds(v, line_no, name, &r.stop_token_ids);
  if (name == "ignore_eos") return ReadBool(v, line_no, name, &r.ignore_eos);
  if (name == "logprobs") return ReadBool(v, line_no, name, &r.logprobs);
  return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": unknown field ",
                                                 JsonQuote(name), " (fields: ", kFieldList, ")"));
}

void AppendLineAndId(std::string* out, int64_t line_no, absl::string_view id_json) {
  absl::StrAppend(out, "{\"line\": ", line_no);
  if (!id_json.empty()) absl::StrAppend(out, ", \"id\": ", id_json);
}

std::string LogprobJson(float v) { return std::isfinite(v) ? absl::StrFormat("%.9g", v) : "null"; }

}  // namespace

absl::StatusOr<ParsedLine> ParseRequestLine(absl::string_view text, int64_t line_no,
                                            const LineRequest& defaults) {
  absl::StatusOr<JsonValue> json = ParseJson(text, "");
  if (!json.ok()) return InvalidJson(json.status(), line_no);
  if (json->kind() != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_no, ": expected a JSON object, got ", json->KindName()));
  }
  ParsedLine out;
  out.line = line_no;
  out.request = defaults;
  out.request.prompt.clear();
  for (const auto& [name, value] : json->members()) {
    absl::Status status = ReadField(name, value, line_no, &out);
    if (!status.ok()) return status;
  }
  if (json->Find("prompt") == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_no, ": missing required field \"prompt\""));
  }
  if (out.request.prompt.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_no, ": \"prompt\" must have at least one token id"));
  }
  return out;
}

std::string FindLineId(absl::string_view text) {
  absl::StatusOr<JsonValue> json = ParseJson(text, "");
  if (!json.ok()) return "";
  const JsonValue* id = json->Find("id");
  return id != nullptr && IsIdKind(*id) ? IdJson(*id) : "";
}

std::string FormatResultLine(int64_t line_no, absl::string_view id_json, const LineResult& result,
                             bool with_logprobs) {
  std::string out;
  AppendLineAndId(&out, line_no, id_json);
  absl::StrAppend(&out, ", \"tokens\": [", absl::StrJoin(result.tokens, ", "),
                  "], \"finish_reason\": ", JsonQuote(result.finish_reason),
                  ", \"prompt_tokens\": ", result.prompt_tokens);
  if (with_logprobs) {
    absl::StrAppend(&out, ", \"logprobs\": [",
                    absl::StrJoin(result.logprobs, ", ",
                                  [](std::string* s, float v) { s->append(LogprobJson(v)); }),
                    "]");
  }
  out += "}";
  return out;
}

std::string FormatErrorLine(int64_t line_no, absl::string_view id_json, absl::string_view message) {
  std::string out;
  AppendLineAndId(&out, line_no, id_json);
  absl::StrAppend(&out, ", \"error\": ", JsonQuote(message), "}");
  return out;
}

}  // namespace moe::tools
