// moe_generate's JSONL lines: every field parsed, defaults for omitted ones, one named message
// per kind of bad line (at the limits of each range), and result lines that read back exactly.
#include "tools/generate_jsonl.h"

#include <cfloat>
#include <cmath>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/core/json.h"
#include "gtest/gtest.h"

namespace moe::tools {
namespace {

constexpr int64_t kLine = 7;

absl::StatusOr<ParsedLine> Parse(const std::string& text) {
  return ParseRequestLine(text, kLine, LineRequest{});
}

TEST(GenerateJsonlTest, ParsesEveryField) {
  absl::StatusOr<ParsedLine> p = Parse(
      R"({"id": "q1", "prompt": [1, 17, 2147483647], "max_new_tokens": 8, "temperature": 0.7,
          "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 42,
          "stop_token_ids": [2, 0], "ignore_eos": true, "logprobs": true})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->line, kLine);
  EXPECT_EQ(p->id_json, "\"q1\"");
  const LineRequest& r = p->request;
  EXPECT_EQ(r.prompt, (std::vector<int32_t>{1, 17, 2147483647}));
  EXPECT_EQ(r.max_new_tokens, 8);
  EXPECT_EQ(r.temperature, 0.7f);
  EXPECT_EQ(r.top_k, 20);
  EXPECT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.min_p, 0.05f);
  EXPECT_EQ(r.repetition_penalty, 1.1f);
  EXPECT_EQ(r.seed, 42u);
  EXPECT_EQ(r.stop_token_ids, (std::vector<int32_t>{2, 0}));
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_TRUE(r.logprobs);
}

TEST(GenerateJsonlTest, OmittedFieldsTakeTheDefaults) {
  LineRequest defaults;
  defaults.prompt = {99, 98};  // ignored: the line's prompt is the only one
  defaults.max_new_tokens = 5;
  defaults.temperature = 0.5f;
  defaults.top_k = 3;
  defaults.top_p = 0.8f;
  defaults.min_p = 0.1f;
  defaults.repetition_penalty = 1.2f;
  defaults.seed = 9;
  defaults.stop_token_ids = {4};
  defaults.ignore_eos = true;
  defaults.logprobs = true;
  absl::StatusOr<ParsedLine> p = ParseRequestLine(R"({"prompt": [3]})", 2, defaults);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->line, 2);
  EXPECT_EQ(p->id_json, "");
  const LineRequest& r = p->request;
  EXPECT_EQ(r.prompt, (std::vector<int32_t>{3}));
  EXPECT_EQ(r.max_new_tokens, 5);
  EXPECT_EQ(r.temperature, 0.5f);
  EXPECT_EQ(r.top_k, 3);
  EXPECT_EQ(r.top_p, 0.8f);
  EXPECT_EQ(r.min_p, 0.1f);
  EXPECT_EQ(r.repetition_penalty, 1.2f);
  EXPECT_EQ(r.seed, 9u);
  EXPECT_EQ(r.stop_token_ids, (std::vector<int32_t>{4}));
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_TRUE(r.logprobs);

  // A line's own value wins, including an empty stop list and false booleans.
  p = ParseRequestLine(R"({"prompt": [3], "stop_token_ids": [], "ignore_eos": false})", 2,
                       defaults);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->request.stop_token_ids.empty());
  EXPECT_FALSE(p->request.ignore_eos);
}

TEST(GenerateJsonlTest, IdIsEchoedAsJson) {
  EXPECT_EQ(Parse(R"({"id": 12, "prompt": [1]})")->id_json, "12");
  EXPECT_EQ(Parse(R"({"id": -2.5, "prompt": [1]})")->id_json, "-2.5");
  EXPECT_EQ(Parse(R"({"id": 9007199254740992, "prompt": [1]})")->id_json, "9007199254740992");
  EXPECT_EQ(Parse(R"({"id": "a\"b\u00e9", "prompt": [1]})")->id_json, "\"a\\\"b\xc3\xa9\"");
  EXPECT_EQ(Parse(R"({"id": "", "prompt": [1]})")->id_json, "\"\"");
}

TEST(GenerateJsonlTest, LimitsAreInclusive) {
  absl::StatusOr<ParsedLine> p = Parse(
      R"({"prompt": [0, 2147483647], "top_k": -2147483648, "seed": 9007199254740992,
          "max_new_tokens": -9007199254740992, "temperature": 3.4028234663852886e38})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->request.top_k, std::numeric_limits<int32_t>::min());
  EXPECT_EQ(p->request.seed, uint64_t{1} << 53);
  EXPECT_EQ(p->request.max_new_tokens, -(int64_t{1} << 53));
  EXPECT_EQ(p->request.temperature, FLT_MAX);
  p = Parse(R"({"prompt": [1], "top_k": 2147483647, "max_new_tokens": 9007199254740992})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->request.top_k, std::numeric_limits<int32_t>::max());
  EXPECT_EQ(p->request.max_new_tokens, int64_t{1} << 53);
}

struct BadLine {
  std::string text;
  std::string message;
};

void PrintTo(const BadLine& b, std::ostream* os) { *os << b.text; }

class GenerateJsonlBadLineTest : public testing::TestWithParam<BadLine> {};

TEST_P(GenerateJsonlBadLineTest, NamesLineAndField) {
  absl::StatusOr<ParsedLine> p = Parse(GetParam().text);
  ASSERT_FALSE(p.ok()) << GetParam().text;
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(p.status().message()), GetParam().message);
}

const char kTokenId[] = "a token id (an integer in [0, 2147483647])";

INSTANTIATE_TEST_SUITE_P(
    AllFields, GenerateJsonlBadLineTest,
    testing::Values(
        // Not a request object.
        BadLine{R"({"prompt": [1, 2})",
                "line 7: invalid JSON at column 17: expected ',' or ']' after an array element"},
        BadLine{R"({"prompt": [1]} x)",
                "line 7: invalid JSON at column 17: unexpected text after the JSON value"},
        BadLine{R"({"prompt": [1], "prompt": [2]})",
                "line 7: invalid JSON at column 17: duplicate member \"prompt\""},
        BadLine{"[1, 2]", "line 7: expected a JSON object, got array"},
        BadLine{"3", "line 7: expected a JSON object, got number"},
        BadLine{"{}", "line 7: missing required field \"prompt\""},
        BadLine{R"({"id": 1})", "line 7: missing required field \"prompt\""},
        BadLine{R"({"prompt": [1], "temprature": 0.5})",
                "line 7: unknown field \"temprature\" (fields: id, prompt, max_new_tokens, "
                "temperature, top_k, top_p, min_p, repetition_penalty, seed, stop_token_ids, "
                "ignore_eos, logprobs)"},
        // prompt
        BadLine{R"({"prompt": []})", "line 7: \"prompt\" must have at least one token id"},
        BadLine{R"({"prompt": "1 2"})",
                "line 7: \"prompt\" must be an array of token ids, got string"},
        BadLine{R"({"prompt": null})",
                "line 7: \"prompt\" must be an array of token ids, got null"},
        BadLine{R"({"prompt": [1, -1]})",
                std::string("line 7: \"prompt\"[1] must be ") + kTokenId + ", got -1"},
        BadLine{R"({"prompt": [2147483648]})",
                std::string("line 7: \"prompt\"[0] must be ") + kTokenId + ", got 2147483648"},
        BadLine{R"({"prompt": [1.5]})",
                std::string("line 7: \"prompt\"[0] must be ") + kTokenId + ", got 1.5"},
        BadLine{R"({"prompt": [[1]]})",
                std::string("line 7: \"prompt\"[0] must be ") + kTokenId + ", got array"},
        // integers
        BadLine{R"({"prompt": [1], "max_new_tokens": 2.5})",
                "line 7: \"max_new_tokens\" must be an integer, got 2.5"},
        BadLine{R"({"prompt": [1], "max_new_tokens": "8"})",
                "line 7: \"max_new_tokens\" must be an integer, got string"},
        BadLine{R"({"prompt": [1], "max_new_tokens": 9007199254740994})",
                "line 7: \"max_new_tokens\" must be an integer, got 9007199254740994"},
        BadLine{R"({"prompt": [1], "top_k": 2147483648})",
                "line 7: \"top_k\" must be an integer in [-2147483648, 2147483647], got "
                "2147483648"},
        BadLine{R"({"prompt": [1], "top_k": -2147483649})",
                "line 7: \"top_k\" must be an integer in [-2147483648, 2147483647], got "
                "-2147483649"},
        BadLine{R"({"prompt": [1], "top_k": 1e-3})",
                "line 7: \"top_k\" must be an integer in [-2147483648, 2147483647], got 0.001"},
        BadLine{R"({"prompt": [1], "seed": -1})",
                "line 7: \"seed\" must be an integer in [0, 9007199254740992], got -1"},
        BadLine{R"({"prompt": [1], "seed": 9007199254740994})",
                "line 7: \"seed\" must be an integer in [0, 9007199254740992], got "
                "9007199254740994"},
        BadLine{R"({"prompt": [1], "seed": "7"})",
                "line 7: \"seed\" must be an integer in [0, 9007199254740992], got string"},
        // floats
        BadLine{R"({"prompt": [1], "temperature": "hot"})",
                "line 7: \"temperature\" must be a number within float range, got string"},
        BadLine{R"({"prompt": [1], "temperature": 3.5e38})",
                "line 7: \"temperature\" must be a number within float range, got 3.5e+38"},
        BadLine{R"({"prompt": [1], "top_p": true})",
                "line 7: \"top_p\" must be a number within float range, got true"},
        BadLine{R"({"prompt": [1], "min_p": null})",
                "line 7: \"min_p\" must be a number within float range, got null"},
        BadLine{R"({"prompt": [1], "repetition_penalty": [1]})",
                "line 7: \"repetition_penalty\" must be a number within float range, got array"},
        BadLine{R"({"prompt": [1], "repetition_penalty": -1e39})",
                "line 7: \"repetition_penalty\" must be a number within float range, got -1e+39"},
        // stop_token_ids
        BadLine{R"({"prompt": [1], "stop_token_ids": 2})",
                "line 7: \"stop_token_ids\" must be an array of token ids, got 2"},
        BadLine{R"({"prompt": [1], "stop_token_ids": [2, "x"]})",
                std::string("line 7: \"stop_token_ids\"[1] must be ") + kTokenId + ", got string"},
        // booleans
        BadLine{R"({"prompt": [1], "ignore_eos": 1})",
                "line 7: \"ignore_eos\" must be true or false, got 1"},
        BadLine{R"({"prompt": [1], "logprobs": "yes"})",
                "line 7: \"logprobs\" must be true or false, got string"},
        // id
        BadLine{R"({"prompt": [1], "id": [1]})",
                "line 7: \"id\" must be a string or a number, got array"},
        BadLine{R"({"prompt": [1], "id": null})",
                "line 7: \"id\" must be a string or a number, got null"},
        BadLine{R"({"prompt": [1], "id": {}})",
                "line 7: \"id\" must be a string or a number, got object"}));

TEST(GenerateJsonlTest, FindLineIdSurvivesBadFields) {
  EXPECT_EQ(FindLineId(R"({"id": "q", "prompt": "bad", "bogus": 1})"), "\"q\"");
  EXPECT_EQ(FindLineId(R"({"id": 3})"), "3");
  EXPECT_EQ(FindLineId(R"({"prompt": [1]})"), "");
  EXPECT_EQ(FindLineId(R"({"id": [1]})"), "");
  EXPECT_EQ(FindLineId(R"({"id": "q")"), "");
  EXPECT_EQ(FindLineId(R"(["id"])"), "");
}

TEST(GenerateJsonlTest, FormatsResultLines) {
  LineResult r;
  r.tokens = {5, 9, 2};
  r.logprobs = {-0.5f, -1.25f, 0.0f};
  r.finish_reason = "stop";
  r.prompt_tokens = 3;
  EXPECT_EQ(FormatResultLine(1, "", r, false),
            R"({"line": 1, "tokens": [5, 9, 2], "finish_reason": "stop", "prompt_tokens": 3})");
  EXPECT_EQ(FormatResultLine(12, "\"q1\"", r, true),
            R"({"line": 12, "id": "q1", "tokens": [5, 9, 2], "finish_reason": "stop", )"
            R"("prompt_tokens": 3, "logprobs": [-0.5, -1.25, 0]})");
  LineResult empty;
  empty.finish_reason = "cancelled";
  EXPECT_EQ(FormatResultLine(4, "7", empty, true),
            R"({"line": 4, "id": 7, "tokens": [], "finish_reason": "cancelled", )"
            R"("prompt_tokens": 0, "logprobs": []})");
}

TEST(GenerateJsonlTest, FormatsErrorLines) {
  EXPECT_EQ(FormatErrorLine(3, "", "line 3: unknown field \"x\""),
            R"({"line": 3, "error": "line 3: unknown field \"x\""})");
  EXPECT_EQ(FormatErrorLine(3, "\"a\"", "bad\nthing"),
            R"({"line": 3, "id": "a", "error": "bad\nthing"})");
}

// Log-probs are written with %.9g: every float reads back to the same bits; non-finite -> null.
TEST(GenerateJsonlTest, LogprobsRoundTrip) {
  LineResult r;
  r.finish_reason = "length";
  r.logprobs = {-0.1f,
                -1.0f / 3.0f,
                std::nextafter(-2.0f, 0.0f),
                -87.33654f,
                -FLT_MIN,
                -std::numeric_limits<float>::denorm_min(),
                -FLT_MAX,
                -0.0f,
                -std::numeric_limits<float>::infinity(),
                std::numeric_limits<float>::quiet_NaN()};
  r.tokens.assign(r.logprobs.size(), 1);
  const std::string text = FormatResultLine(1, "\"id with \\\"quotes\\\"\"", r, true);
  absl::StatusOr<JsonValue> json = ParseJson(text, "result");
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << text;
  EXPECT_EQ(json->Find("id")->string(), "id with \"quotes\"");
  const std::vector<JsonValue>& back = json->Find("logprobs")->array();
  ASSERT_EQ(back.size(), r.logprobs.size());
  for (size_t i = 0; i + 2 < back.size(); ++i) {
    const float f = static_cast<float>(back[i].number());
    EXPECT_EQ(std::signbit(f), std::signbit(r.logprobs[i])) << i;
    EXPECT_EQ(f, r.logprobs[i]) << i << ": " << text;
  }
  EXPECT_TRUE(back[back.size() - 2].is_null());
  EXPECT_TRUE(back[back.size() - 1].is_null());
}

// An error line carries any message, quotes and control characters included, back intact.
TEST(GenerateJsonlTest, ErrorLineRoundTrip) {
  const std::string message = "line 9: \"prompt\"[0] \\ tab\t nl\n bell\x07 utf8 \xc3\xa9";
  absl::StatusOr<JsonValue> json = ParseJson(FormatErrorLine(9, "-1.5", message), "error");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->Find("line")->number(), 9);
  EXPECT_EQ(json->Find("id")->number(), -1.5);
  EXPECT_EQ(json->Find("error")->string(), message);
}

}  // namespace
}  // namespace moe::tools
