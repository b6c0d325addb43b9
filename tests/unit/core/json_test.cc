#include "engine/core/json.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(JsonTest, ParsesEveryKind) {
  absl::StatusOr<JsonValue> v = ParseJson(
      R"( {"a": 1, "b": -2.5e1, "c": "x\"\\\/\n\u00e9\ud83d\ude00", "d": [true, false, null],
          "e": {}} )",
      "t.json");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->kind(), JsonValue::Kind::kObject);
  EXPECT_EQ(v->Find("a")->number(), 1.0);
  EXPECT_EQ(v->Find("b")->number(), -25.0);
  EXPECT_EQ(v->Find("c")->string(), "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
  ASSERT_EQ(v->Find("d")->array().size(), 3u);
  EXPECT_TRUE(v->Find("d")->array()[0].bool_value());
  EXPECT_EQ(v->Find("d")->array()[1].kind(), JsonValue::Kind::kBool);
  EXPECT_TRUE(v->Find("d")->array()[2].is_null());
  EXPECT_EQ(v->Find("e")->kind(), JsonValue::Kind::kObject);
  EXPECT_EQ(v->Find("missing"), nullptr);
  EXPECT_EQ(v->Find("b")->line(), 1);
  EXPECT_EQ(v->Find("e")->line(), 2);
}

TEST(JsonTest, KeepsMemberOrder) {
  absl::StatusOr<JsonValue> v = ParseJson(R"({"z": 1, "a": 2, "m": 3})", "t.json");
  ASSERT_TRUE(v.ok());
  ASSERT_EQ(v->members().size(), 3u);
  EXPECT_EQ(v->members()[0].first, "z");
  EXPECT_EQ(v->members()[2].first, "m");
}

struct BadCase {
  const char* text;
  const char* message;  // expected in the Status, after "bad.json:"
};

class JsonErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(JsonErrorTest, NamesSourceLineAndColumn) {
  absl::StatusOr<JsonValue> v = ParseJson(GetParam().text, "bad.json");
  ASSERT_FALSE(v.ok()) << GetParam().text;
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "bad.json:")) << v.status();
  EXPECT_TRUE(absl::StrContains(v.status().message(), GetParam().message)) << v.status();
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, JsonErrorTest,
    ::testing::Values(
        BadCase{"", "1:1: unexpected end of input"},
        BadCase{"{\"a\": 1,\n \"b\" 2}", "2:6: expected ':'"},
        BadCase{"{\"a\": 1 \"b\": 2}", "1:9: expected ',' or '}'"},
        BadCase{"[1, 2", "expected ',' or ']'"},
        BadCase{"{\"a\": 1, \"a\": 2}", "1:10: duplicate member \"a\""},
        BadCase{"{a: 1}", "expected a quoted member name"}, BadCase{"[01]", "expected ',' or ']'"},
        BadCase{"[1.]", "expected a digit after '.'"},
        BadCase{"[1e]", "expected a digit in the exponent"}, BadCase{"[-]", "expected a digit"},
        BadCase{"[1e999]", "number out of range"}, BadCase{"\"abc", "unterminated string"},
        BadCase{"\"a\tb\"", "control character"}, BadCase{"\"\\x\"", "invalid escape"},
        BadCase{"\"\\ud800\"", "unpaired UTF-16 surrogate"}, BadCase{"\"\\u12G4\"", "4 hex digits"},
        BadCase{"tru", "unexpected character 't'"},
        BadCase{"{} {}", "1:4: unexpected text after the JSON value"}));

TEST(JsonTest, RefusesDeepNesting) {
  const std::string ok = std::string(64, '[') + std::string(64, ']');
  EXPECT_TRUE(ParseJson(ok, "deep.json").ok());
  const std::string deep = std::string(66, '[') + std::string(66, ']');
  absl::StatusOr<JsonValue> v = ParseJson(deep, "deep.json");
  ASSERT_FALSE(v.ok());
  EXPECT_TRUE(absl::StrContains(v.status().message(), "nesting deeper than 64")) << v.status();
}

TEST(JsonTest, MissingFileIsNotFoundNamingThePath) {
  absl::StatusOr<JsonValue> v = ReadJsonFile("/nonexistent/dir/x.json");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(v.status().message(), "/nonexistent/dir/x.json"));
}

TEST(JsonTest, QuoteAndNumberReadBack) {
  const std::string s = "a\"b\\c\nd\x01";
  absl::StatusOr<JsonValue> v = ParseJson(JsonQuote(s), "q");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->string(), s);
  for (double d : {0.0, 1.0, -2.5, 0.1, 1e-300, 123456789.125, 3.141592653589793}) {
    absl::StatusOr<JsonValue> n = ParseJson(JsonNumber(d), "n");
    ASSERT_TRUE(n.ok()) << JsonNumber(d);
    EXPECT_EQ(n->number(), d);
  }
  EXPECT_EQ(JsonNumber(0.1), "0.1");
  EXPECT_EQ(JsonNumber(1.0 / 0.0), "null");
  EXPECT_EQ(JsonRounded(32.85502148959136, 5), "32.855");
  EXPECT_EQ(JsonRounded(1073741824.0, 5), "1.0737e+09");
  EXPECT_EQ(JsonRounded(0.0, 5), "0");
}

}  // namespace
}  // namespace moe
