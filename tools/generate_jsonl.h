// The JSONL line format of moe_generate: one request object per input line, one result object
// per output line. Kept free of the engine so that it can be tested alone; moe_generate copies
// a LineRequest into a moe::GenerationRequest field by field.
//
// Input line (every field but "prompt" optional; an omitted field takes the defaults given):
//   {"id": "q1", "prompt": [1, 17, 42], "max_new_tokens": 8, "temperature": 0.7, "top_k": 20,
//    "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 7,
//    "stop_token_ids": [2], "ignore_eos": false, "logprobs": true}
// Output line:
//   {"line": 1, "id": "q1", "tokens": [5, 9, 2], "finish_reason": "stop", "prompt_tokens": 3,
//    "logprobs": [-0.105360545, -1.20397282, -0.0100503359]}
//   {"line": 2, "error": "line 2: unknown field \"temprature\" ..."}
//
// Only types, representable ranges and a non-empty prompt are checked here (token ids in
// [0, 2^31), integers exact in a double, floats finite as float); the engine checks the values
// against the model and its limits.
#ifndef MOE_TOOLS_GENERATE_JSONL_H_
#define MOE_TOOLS_GENERATE_JSONL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::tools {

// One request as read from a line; the initialisers are moe::GenerationRequest's defaults.
struct LineRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool logprobs = false;
};

struct ParsedLine {
  int64_t line = 0;     // 1-based input line number
  std::string id_json;  // the "id" member as JSON text (a string or a number), "" if absent
  LineRequest request;
};

// Parses one non-blank input line. Fields the line omits are copied from `defaults` (whose
// prompt is ignored). InvalidArgument "line N: ..." naming the field for invalid JSON, a
// non-object, a missing "prompt", an unknown field or a value of the wrong type or range.
absl::StatusOr<ParsedLine> ParseRequestLine(absl::string_view text, int64_t line_no,
                                            const LineRequest& defaults);

// The "id" of a line as JSON text, or "" when the line is not JSON, has no "id", or its id is
// neither a string nor a number: lets the error line of a bad request still carry its id.
std::string FindLineId(absl::string_view text);

// What the engine returned for one request, in the tool's terms.
struct LineResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::string finish_reason;  // "length", "stop", "cancelled"
  int64_t prompt_tokens = 0;
};

// A result line (no trailing newline). "logprobs" is written when `with_logprobs`, each as
// %.9g (reads back to the same float); a non-finite log-prob is written as null.
std::string FormatResultLine(int64_t line_no, absl::string_view id_json, const LineResult& result,
                             bool with_logprobs);

// An error line (no trailing newline): {"line": N, "id": ..., "error": "message"}.
std::string FormatErrorLine(int64_t line_no, absl::string_view id_json, absl::string_view message);

}  // namespace moe::tools

#endif  // MOE_TOOLS_GENERATE_JSONL_H_
