#include "tools/preset.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"

namespace moe::tools {
namespace {

// Test cwd is the runfiles root of this workspace; the presets are data of this test.
MoePreset Load(const std::string& name) {
  absl::StatusOr<MoePreset> p = LoadPreset(absl::StrCat("models/presets/", name, ".json"));
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : MoePreset{};
}

TEST(PresetTest, MixtralShape) {
  for (const char* name : {"mixtral-8x7b", "mixtral-8x7b-small"}) {
    const MoePreset p = Load(name);
    EXPECT_EQ(p.name, name);
    EXPECT_EQ(p.config.num_experts, 8);
    EXPECT_EQ(p.config.top_k, 2);
    EXPECT_EQ(p.config.score, ScoreFunction::kSoftmax);
    EXPECT_TRUE(p.config.renormalize);
    EXPECT_FALSE(p.config.use_expert_bias);
    EXPECT_EQ(p.config.num_shared_experts, 0);
    EXPECT_EQ(p.config.dtype, DType::kBF16);
  }
  const MoePreset full = Load("mixtral-8x7b");
  EXPECT_EQ(full.config.hidden, 4096);
  EXPECT_EQ(full.config.inter, 14336);
}

TEST(PresetTest, Qwen3Shape) {
  for (const char* name : {"qwen3-30b-a3b", "qwen3-30b-a3b-small"}) {
    const MoePreset p = Load(name);
    EXPECT_EQ(p.config.num_experts, 128);
    EXPECT_EQ(p.config.top_k, 8);
    EXPECT_EQ(p.config.score, ScoreFunction::kSoftmax);
    EXPECT_TRUE(p.config.renormalize);
  }
  const MoePreset full = Load("qwen3-30b-a3b");
  EXPECT_EQ(full.config.hidden, 2048);
  EXPECT_EQ(full.config.inter, 768);
}

TEST(PresetTest, DeepSeekV3CutShape) {
  for (const char* name : {"deepseek-v3-e32", "deepseek-v3-e32-small"}) {
    const MoePreset p = Load(name);
    EXPECT_EQ(p.config.num_experts, 32);
    EXPECT_EQ(p.config.top_k, 8);
    EXPECT_EQ(p.config.score, ScoreFunction::kSigmoid);
    EXPECT_TRUE(p.config.use_expert_bias);
    EXPECT_EQ(p.config.num_groups, 8);
    EXPECT_EQ(p.config.topk_groups, 4);
    EXPECT_TRUE(p.config.renormalize);
    EXPECT_FLOAT_EQ(p.config.route_scale, 2.5f);
    EXPECT_EQ(p.config.num_shared_experts, 1);
  }
  const MoePreset full = Load("deepseek-v3-e32");
  EXPECT_EQ(full.config.hidden, 7168);
  EXPECT_EQ(full.config.inter, 2048);
  EXPECT_EQ(full.config.shared_inter, 2048);
}

TEST(PresetTest, SmallCopiesAreAFewMegabytes) {
  for (const char* name : {"mixtral-8x7b-small", "qwen3-30b-a3b-small", "deepseek-v3-e32-small"}) {
    const int64_t bytes = TotalWeightBytes(Load(name).config);
    EXPECT_GT(bytes, 1 << 20) << name;
    EXPECT_LT(bytes, 8 << 20) << name;
  }
  // Mixtral-8x7B's experts in bf16: 8 * 3 * 4096 * 14336 * 2 bytes.
  EXPECT_EQ(ExpertWeightBytes(Load("mixtral-8x7b").config) * 8, 2818572288LL);
}

constexpr char kGood[] = R"({
  "name": "t",
  "num_experts": 8,
  "top_k": 2,
  "hidden": 64,
  "inter": 32,
  "score": "softmax"
})";

absl::Status ParseWith(absl::string_view from, absl::string_view to) {
  const std::string text = absl::StrReplaceAll(kGood, {{from, to}});
  return ParsePreset(text, "p.json").status();
}

TEST(PresetTest, MinimalPresetTakesConfigDefaults) {
  absl::StatusOr<MoePreset> p = ParsePreset(kGood, "p.json");
  ASSERT_TRUE(p.ok()) << p.status();
  const MoeConfig defaults;
  EXPECT_EQ(p->config.num_groups, defaults.num_groups);
  EXPECT_EQ(p->config.renormalize, defaults.renormalize);
  EXPECT_EQ(p->config.route_scale, defaults.route_scale);
  EXPECT_EQ(p->config.dtype, defaults.dtype);
  EXPECT_EQ(p->seed, 1u);
}

TEST(PresetTest, ErrorsNameFileAndField) {
  struct Case {
    absl::string_view from, to;
    const char* message;
  };
  const Case cases[] = {
      {"\"top_k\": 2", "\"top_k\": \"2\"",
       "p.json: field \"top_k\": expected an integer, got string (line 4)"},
      {"\"top_k\": 2", "\"top_k\": 2.5", "p.json: field \"top_k\": expected an integer, got 2.5"},
      {"\"top_k\": 2", "\"top_k\": 0", "p.json: field \"top_k\": must be at least 1, got 0"},
      {"\"top_k\": 2", "\"top_k\": 9", "p.json: moe: top_k=9 exceeds num_experts=8"},
      {"\"top_k\": 2,", "", "p.json: field \"top_k\": required but missing"},
      {"\"softmax\"", "\"relu\"",
       "p.json: field \"score\": expected \"softmax\" or \"sigmoid\", got \"relu\""},
      {"\"name\": \"t\"", "\"name\": \"t\", \"dtype\": \"f16\"",
       "p.json: field \"dtype\": expected \"bf16\" or \"f32\", got \"f16\""},
      {"\"name\": \"t\"", "\"name\": \"t\", \"renormalize\": 1",
       "p.json: field \"renormalize\": expected true or false, got number"},
      {"\"name\": \"t\"", "\"name\": \"t\", \"topk_grups\": 2",
       "p.json: unknown field \"topk_grups\" (line 2)"},
      {"\"name\": \"t\"", "\"name\": \"t\", \"num_groups\": 3",
       "p.json: moe: num_experts=8 is not divisible by num_groups=3"},
      {"\"name\": \"t\"", "\"name\": \"\"", "p.json: field \"name\": must not be empty"},
      {"\"softmax\"", "\"softmax\",", "p.json:8:1: expected a quoted member name"},
  };
  for (const Case& c : cases) {
    absl::Status s = ParseWith(c.from, c.to);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_TRUE(absl::StrContains(s.message(), c.message))
        << "want: " << c.message << "\ngot:  " << s.message();
  }
}

TEST(PresetTest, TopLevelMustBeAnObject) {
  absl::StatusOr<MoePreset> p = ParsePreset("[1]", "arr.json");
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(),
                                "arr.json: expected a JSON object at the top level, got array"));
}

TEST(PresetTest, MissingFileNamesThePath) {
  absl::StatusOr<MoePreset> p = LoadPreset("models/presets/no-such-preset.json");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(p.status().message(), "models/presets/no-such-preset.json"));
}

}  // namespace
}  // namespace moe::tools
