#include "engine/model/model_config.h"

#include <unistd.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/json.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace moe {
namespace {

// Test cwd is the runfiles root of this workspace; the shipped configs are data of this test.
constexpr char kMixtral[] = "models/mixtral-tiny";
constexpr char kQwen3[] = "models/qwen3-moe-tiny";
constexpr char kQwen2[] = "models/qwen2-moe-tiny";
constexpr char kDeepseek[] = "models/deepseek-v3-tiny";

std::string ConfigText(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadTextFile(absl::StrCat(dir, "/config.json"));
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

ModelConfig Load(const std::string& dir) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

// ---- the shipped configs (expected values read from their config.json) ----

TEST(ModelConfigTest, Mixtral) {
  const ModelConfig c = Load(kMixtral);
  EXPECT_EQ(c.family, ModelFamily::kMixtral);
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);  // null in the file: hidden_size / heads
  EXPECT_EQ(c.intermediate_size, 96);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.layer_sliding, std::vector<bool>({false, false}));
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kNone);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>({true, true}));
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.hidden, 64);
  EXPECT_EQ(c.moe.inter, 96);
  EXPECT_EQ(c.moe.score, ScoreFunction::kSoftmax);
  EXPECT_TRUE(c.moe.renormalize);
  EXPECT_FALSE(c.moe.use_expert_bias);
  EXPECT_EQ(c.moe.num_shared_experts, 0);
  EXPECT_FALSE(c.use_mla);
  EXPECT_EQ(c.dtype_name, "float32");
  EXPECT_TRUE(c.has_dtype);
  EXPECT_EQ(c.dtype, DType::kF32);
}

TEST(ModelConfigTest, Qwen3Moe) {
  const ModelConfig c = Load(kQwen3);
  EXPECT_EQ(c.family, ModelFamily::kQwen3Moe);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 32);  // explicit, not hidden_size / heads = 16
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>({false, true, true}));  // mlp_only_layers [0]
  EXPECT_EQ(c.moe.num_experts, 8);  // written as num_local_experts
  EXPECT_EQ(c.moe.top_k, 4);
  EXPECT_EQ(c.moe.inter, 48);
  EXPECT_TRUE(c.moe.renormalize);
  EXPECT_EQ(c.moe.score, ScoreFunction::kSoftmax);
  EXPECT_EQ(c.moe.num_shared_experts, 0);
}

TEST(ModelConfigTest, Qwen2Moe) {
  const ModelConfig c = Load(kQwen2);
  EXPECT_EQ(c.family, ModelFamily::kQwen2Moe);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_TRUE(c.attention_bias);  // qkv_bias
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.sliding_window, 0);  // sliding_window 0 with use_sliding_window false
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>({true, true}));
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.inter, 48);
  EXPECT_FALSE(c.moe.renormalize);
  EXPECT_EQ(c.moe.num_shared_experts, 1);
  EXPECT_EQ(c.moe.shared_inter, 96);
  EXPECT_TRUE(c.moe.shared_gate);
}

TEST(ModelConfigTest, DeepseekV3) {
  const ModelConfig c = Load(kDeepseek);
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV3);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.head_dim, 24);  // qk_nope_head_dim + qk_rope_head_dim
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_TRUE(c.use_mla);
  EXPECT_EQ(c.mla.q_lora_rank, 32);
  EXPECT_EQ(c.mla.kv_lora_rank, 32);
  EXPECT_EQ(c.mla.qk_nope_head_dim, 16);
  EXPECT_EQ(c.mla.qk_rope_head_dim, 8);
  EXPECT_EQ(c.mla.v_head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kYarn);
  EXPECT_TRUE(c.rope.interleave);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>({false, true, true}));  // first_k_dense_replace 1
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.inter, 32);
  EXPECT_EQ(c.moe.score, ScoreFunction::kSigmoid);
  EXPECT_TRUE(c.moe.use_expert_bias);
  EXPECT_EQ(c.moe.num_groups, 4);
  EXPECT_EQ(c.moe.topk_groups, 2);
  EXPECT_TRUE(c.moe.renormalize);
  EXPECT_FLOAT_EQ(c.moe.route_scale, 2.5f);
  EXPECT_EQ(c.moe.num_shared_experts, 1);
  EXPECT_EQ(c.moe.shared_inter, 32);
  EXPECT_FALSE(c.moe.shared_gate);
}

TEST(ModelConfigTest, MissingConfigIsNotFoundNamingThePath) {
  const absl::StatusOr<ModelConfig> c = LoadModelConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "/nonexistent/model/config.json"))
      << c.status();
}

// ---- mutations of a valid config ----

// `text` re-serialised with edits: a key ("a" or "a.b" for a member of object "a") -> raw JSON
// to put there (added if absent), or nullopt to remove it.
using Edits = std::map<std::string, std::optional<std::string>>;

std::string Write(const JsonValue& v, const std::string& path, const Edits& edits) {
  switch (v.kind()) {
    case JsonValue::Kind::kNull:
      return "null";
    case JsonValue::Kind::kBool:
      return v.bool_value() ? "true" : "false";
    case JsonValue::Kind::kNumber:
      return JsonNumber(v.number());
    case JsonValue::Kind::kString:
      return JsonQuote(v.string());
    case JsonValue::Kind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < v.array().size(); ++i) {
        absl::StrAppend(&out, i ? ", " : "", Write(v.array()[i], "", {}));
      }
      return out + "]";
    }
    case JsonValue::Kind::kObject:
      break;
  }
  const std::string prefix = path.empty() ? "" : path + ".";
  std::vector<std::string> parts;
  for (const auto& [key, member] : v.members()) {
    const std::string name = prefix + key;
    auto it = edits.find(name);
    if (it == edits.end()) {
      parts.push_back(absl::StrCat(JsonQuote(key), ": ", Write(member, name, edits)));
    } else if (it->second.has_value()) {
      parts.push_back(absl::StrCat(JsonQuote(key), ": ", *it->second));
    }
  }
  for (const auto& [name, raw] : edits) {
    if (!raw.has_value() || !absl::StartsWith(name, prefix)) continue;
    const std::string key = name.substr(prefix.size());
    if (absl::StrContains(key, ".") || v.Find(key) != nullptr) continue;
    parts.push_back(absl::StrCat(JsonQuote(key), ": ", *raw));
  }
  return absl::StrCat("{", absl::StrJoin(parts, ",\n"), "}");
}

absl::StatusOr<ModelConfig> ParseMutated(const std::string& dir, const Edits& edits) {
  absl::StatusOr<JsonValue> root = ParseJson(ConfigText(dir), dir);
  EXPECT_TRUE(root.ok()) << root.status();
  if (!root.ok()) return root.status();
  return ParseModelConfig(Write(*root, "", edits), absl::StrCat(dir, "/config.json"));
}

TEST(ModelConfigTest, UnmutatedRoundTripParses) {
  for (const char* dir : {kMixtral, kQwen3, kQwen2, kDeepseek}) {
    EXPECT_TRUE(ParseMutated(dir, {}).ok()) << dir;
  }
}

struct BadCase {
  const char* name;
  const char* dir;
  Edits edits;
  absl::StatusCode code;
  std::vector<std::string> substrings;  // besides the file name
};

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kUnimpl = absl::StatusCode::kUnimplemented;

const std::vector<BadCase>& BadCases() {
  static const auto* cases = new std::vector<BadCase>{
      // Any family: identity, types, presence.
      {"unknown_model_type",
       kMixtral,
       {{"model_type", "\"llama\""}},
       kInvalid,
       {"model_type=\"llama\"", "mixtral, qwen3_moe, qwen2_moe, deepseek_v3"}},
      {"missing_model_type",
       kMixtral,
       {{"model_type", std::nullopt}},
       kInvalid,
       {"missing required field \"model_type\""}},
      {"missing_hidden_size",
       kQwen3,
       {{"hidden_size", std::nullopt}},
       kInvalid,
       {"missing required field \"hidden_size\""}},
      {"hidden_size_string",
       kMixtral,
       {{"hidden_size", "\"64\""}},
       kInvalid,
       {"field \"hidden_size\" must be an integer, got string"}},
      {"hidden_size_fraction",
       kMixtral,
       {{"hidden_size", "64.5"}},
       kInvalid,
       {"field \"hidden_size\" must be an integer, got number"}},
      {"vocab_size_zero",
       kMixtral,
       {{"vocab_size", "0"}},
       kInvalid,
       {"vocab_size=0 must be positive"}},
      {"num_hidden_layers_negative",
       kMixtral,
       {{"num_hidden_layers", "-1"}},
       kInvalid,
       {"num_hidden_layers=-1 must be positive"}},
      {"tie_word_embeddings_number",
       kMixtral,
       {{"tie_word_embeddings", "1"}},
       kInvalid,
       {"field \"tie_word_embeddings\" must be a boolean, got number"}},
      {"rms_norm_eps_zero",
       kMixtral,
       {{"rms_norm_eps", "0"}},
       kInvalid,
       {"rms_norm_eps=0 must be positive"}},
      {"rms_norm_eps_string",
       kMixtral,
       {{"rms_norm_eps", "\"1e-5\""}},
       kInvalid,
       {"field \"rms_norm_eps\" must be a number, got string"}},
      {"hidden_act_gelu",
       kQwen2,
       {{"hidden_act", "\"gelu\""}},
       kUnimpl,
       {"hidden_act=\"gelu\" is not supported"}},
      {"quantization_config",
       kDeepseek,
       {{"quantization_config", "{\"quant_method\": \"fp8\"}"}},
       kUnimpl,
       {"quantization_config is not supported"}},
      // Heads.
      {"kv_heads_3_of_4",
       kMixtral,
       {{"num_key_value_heads", "3"}},
       kInvalid,
       {"num_key_value_heads=3 does not divide num_attention_heads=4"}},
      {"kv_heads_5_of_4",
       kMixtral,
       {{"num_key_value_heads", "5"}},
       kInvalid,
       {"num_key_value_heads=5 does not divide num_attention_heads=4"}},
      {"kv_heads_zero",
       kMixtral,
       {{"num_key_value_heads", "0"}},
       kInvalid,
       {"num_key_value_heads=0 must be positive"}},
      {"heads_not_dividing_hidden",
       kMixtral,
       {{"num_attention_heads", "3"}, {"num_key_value_heads", "1"}},
       kInvalid,
       {"num_attention_heads=3 does not divide hidden_size=64"}},
      {"head_dim_zero", kQwen3, {{"head_dim", "0"}}, kInvalid, {"head_dim=0 must be positive"}},
      // Experts and top-k (limit: the expert count, 8).
      {"top_k_9_of_8",
       kMixtral,
       {{"num_experts_per_tok", "9"}},
       kInvalid,
       {"num_experts_per_tok=9 exceeds the number of experts 8"}},
      {"top_k_zero",
       kMixtral,
       {{"num_experts_per_tok", "0"}},
       kInvalid,
       {"num_experts_per_tok=0 must be positive"}},
      {"experts_missing",
       kMixtral,
       {{"num_local_experts", std::nullopt}},
       kInvalid,
       {"missing required field \"num_experts\""}},
      {"experts_disagree",
       kQwen3,
       {{"num_experts", "16"}},
       kInvalid,
       {"num_experts=16 disagrees with num_local_experts=8"}},
      {"moe_intermediate_size_missing",
       kQwen3,
       {{"moe_intermediate_size", std::nullopt}},
       kInvalid,
       {"missing required field \"moe_intermediate_size\""}},
      // Sliding window.
      {"mixtral_sliding_window_zero",
       kMixtral,
       {{"sliding_window", "0"}},
       kInvalid,
       {"sliding_window=0 must be positive or null"}},
      {"qwen_sliding_window_null_when_used",
       kQwen3,
       {{"use_sliding_window", "true"}},
       kInvalid,
       {"missing required field \"sliding_window\""}},
      {"qwen_layer_types_length",
       kQwen2,
       {{"use_sliding_window", "true"},
        {"sliding_window", "8"},
        {"layer_types", "[\"full_attention\"]"}},
       kInvalid,
       {"layer_types has 1 entries, num_hidden_layers=2"}},
      // RoPE.
      {"rope_linear_factor_2",
       kMixtral,
       {{"rope_parameters.rope_type", "\"linear\""}, {"rope_parameters.factor", "2.0"}},
       kUnimpl,
       {"rope_parameters.rope_type=\"linear\" is not supported"}},
      {"rope_dynamic",
       kQwen3,
       {{"rope_parameters.rope_type", "\"dynamic\""}},
       kUnimpl,
       {"rope_parameters.rope_type=\"dynamic\""}},
      {"rope_theta_disagrees",
       kMixtral,
       {{"rope_theta", "10000.0"}},
       kInvalid,
       {"rope_theta=10000 disagrees with rope_parameters.rope_theta=1e+06"}},
      {"rope_theta_missing",
       kMixtral,
       {{"rope_parameters.rope_theta", std::nullopt}},
       kInvalid,
       {"missing required field \"rope_parameters.rope_theta\""}},
      {"rope_parameters_not_object",
       kMixtral,
       {{"rope_parameters", "[]"}},
       kInvalid,
       {"field \"rope_parameters\" must be an object, got array"}},
      {"legacy_rope_theta_missing",
       kMixtral,
       {{"rope_parameters", std::nullopt}, {"rope_theta", std::nullopt}},
       kInvalid,
       {"missing required field \"rope_theta\""}},
      {"partial_rotary_factor",
       kMixtral,
       {{"rope_parameters.partial_rotary_factor", "0.5"}},
       kUnimpl,
       {"rope_parameters.partial_rotary_factor=0.5"}},
      {"yarn_factor_missing",
       kDeepseek,
       {{"rope_parameters.factor", std::nullopt}},
       kInvalid,
       {"missing required field \"rope_parameters.factor\""}},
      {"yarn_factor_below_1",
       kDeepseek,
       {{"rope_parameters.factor", "0.5"}, {"rope_scaling", std::nullopt}},
       kInvalid,
       {"rope_parameters.factor=0.5 must be >= 1"}},
      {"yarn_original_max_zero",
       kDeepseek,
       {{"rope_parameters.original_max_position_embeddings", "0"}},
       kInvalid,
       {"rope_parameters.original_max_position_embeddings=0 must be positive"}},
      {"yarn_attention_factor",
       kDeepseek,
       {{"rope_parameters.attention_factor", "1.2"}},
       kUnimpl,
       {"rope_parameters.attention_factor is not supported"}},
      {"rope_scaling_disagrees",
       kDeepseek,
       {{"rope_scaling.factor", "8.0"}},
       kInvalid,
       {"rope_scaling (factor=8) disagrees with rope_parameters (factor=4)"}},
      // Qwen layer pattern (limit: num_hidden_layers = 3).
      {"mlp_only_layers_3_of_3",
       kQwen3,
       {{"mlp_only_layers", "[3]"}},
       kInvalid,
       {"mlp_only_layers entry 3 is outside [0, 3)"}},
      {"mlp_only_layers_negative",
       kQwen3,
       {{"mlp_only_layers", "[-1]"}},
       kInvalid,
       {"mlp_only_layers entry -1 is outside [0, 3)"}},
      {"mlp_only_layers_string",
       kQwen3,
       {{"mlp_only_layers", "[\"0\"]"}},
       kInvalid,
       {"field \"mlp_only_layers\" must be an array of integers, got string"}},
      {"decoder_sparse_step_zero",
       kQwen3,
       {{"decoder_sparse_step", "0"}},
       kInvalid,
       {"decoder_sparse_step=0 must be positive"}},
      {"qwen2_shared_missing",
       kQwen2,
       {{"shared_expert_intermediate_size", std::nullopt}},
       kInvalid,
       {"missing required field \"shared_expert_intermediate_size\""}},
      {"qwen2_shared_zero",
       kQwen2,
       {{"shared_expert_intermediate_size", "0"}},
       kInvalid,
       {"shared_expert_intermediate_size=0 must be positive"}},
      // DeepSeek-V3 routing (limits: n_group = 4, n_routed_experts = 8).
      {"topk_group_5_of_4",
       kDeepseek,
       {{"topk_group", "5"}},
       kInvalid,
       {"topk_group=5 exceeds n_group=4"}},
      {"n_group_3_of_8_experts",
       kDeepseek,
       {{"n_group", "3"}},
       kInvalid,
       {"n_routed_experts=8 is not divisible by n_group=3"}},
      {"n_group_8_singletons",
       kDeepseek,
       {{"n_group", "8"}},
       kInvalid,
       {"num_experts=8 / num_groups=8 leaves 1 expert per group"}},
      {"n_group_zero", kDeepseek, {{"n_group", "0"}}, kInvalid, {"n_group=0 must be positive"}},
      {"topk_method_group_limited",
       kDeepseek,
       {{"topk_method", "\"group_limited_greedy\""}},
       kUnimpl,
       {"topk_method=\"group_limited_greedy\" is not supported"}},
      {"scoring_func_softmax",
       kDeepseek,
       {{"scoring_func", "\"softmax\""}},
       kUnimpl,
       {"scoring_func=\"softmax\" is not supported"}},
      {"routed_scaling_factor_missing",
       kDeepseek,
       {{"routed_scaling_factor", std::nullopt}},
       kInvalid,
       {"missing required field \"routed_scaling_factor\""}},
      {"routed_scaling_factor_zero",
       kDeepseek,
       {{"routed_scaling_factor", "0"}},
       kInvalid,
       {"routed_scaling_factor=0 must be positive"}},
      {"n_shared_experts_negative",
       kDeepseek,
       {{"n_shared_experts", "-1"}},
       kInvalid,
       {"n_shared_experts=-1 is negative"}},
      {"first_k_dense_4_of_3",
       kDeepseek,
       {{"first_k_dense_replace", "4"}},
       kInvalid,
       {"first_k_dense_replace=4 is outside [0, 3]"}},
      {"first_k_dense_negative",
       kDeepseek,
       {{"first_k_dense_replace", "-1"}},
       kInvalid,
       {"first_k_dense_replace=-1 is outside [0, 3]"}},
      {"moe_layer_freq_zero",
       kDeepseek,
       {{"moe_layer_freq", "0"}},
       kInvalid,
       {"moe_layer_freq=0 must be positive"}},
      // DeepSeek-V3 MLA.
      {"kv_lora_rank_missing",
       kDeepseek,
       {{"kv_lora_rank", std::nullopt}},
       kInvalid,
       {"missing required field \"kv_lora_rank\""}},
      {"q_lora_rank_zero",
       kDeepseek,
       {{"q_lora_rank", "0"}},
       kInvalid,
       {"q_lora_rank=0 must be positive or null"}},
      {"qk_rope_head_dim_odd",
       kDeepseek,
       {{"qk_rope_head_dim", "7"}, {"qk_head_dim", "23"}},
       kInvalid,
       {"qk_rope_head_dim=7 must be even"}},
      {"qk_head_dim_disagrees",
       kDeepseek,
       {{"qk_head_dim", "25"}},
       kInvalid,
       {"qk_head_dim=25 is not qk_nope_head_dim=16 + qk_rope_head_dim=8"}},
  };
  return *cases;
}

TEST(ModelConfigTest, BadConfigs) {
  for (const BadCase& bad : BadCases()) {
    SCOPED_TRACE(bad.name);
    const absl::StatusOr<ModelConfig> c = ParseMutated(bad.dir, bad.edits);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), bad.code) << c.status();
    EXPECT_TRUE(absl::StrContains(c.status().message(), absl::StrCat(bad.dir, "/config.json")))
        << c.status();
    for (const std::string& s : bad.substrings) {
      EXPECT_TRUE(absl::StrContains(c.status().message(), s)) << c.status() << "\nwant: " << s;
    }
  }
}

TEST(ModelConfigTest, MalformedJsonNamesLineAndColumn) {
  const absl::StatusOr<ModelConfig> c = ParseModelConfig("{\n  \"model_type\": }", "x.json");
  EXPECT_EQ(c.status().code(), kInvalid);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "x.json:2:")) << c.status();
  const absl::StatusOr<ModelConfig> a = ParseModelConfig("[]", "y.json");
  EXPECT_EQ(a.status().code(), kInvalid);
  EXPECT_TRUE(absl::StrContains(a.status().message(), "y.json: the top level must be an object"))
      << a.status();
}

// Wrong types carry the value's position.
TEST(ModelConfigTest, WrongTypeNamesPosition) {
  const absl::StatusOr<ModelConfig> c =
      ParseModelConfig("{\"model_type\": \"mixtral\",\n \"hidden_act\": 1}", "z.json");
  EXPECT_TRUE(absl::StrContains(c.status().message(), "z.json:2:16: field \"hidden_act\""))
      << c.status();
}

// ---- accepted variations, including the values at each limit ----

ModelConfig ParseOk(const std::string& dir, const Edits& edits) {
  absl::StatusOr<ModelConfig> c = ParseMutated(dir, edits);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

TEST(ModelConfigTest, LimitsAccepted) {
  EXPECT_EQ(ParseOk(kMixtral, {{"num_experts_per_tok", "8"}}).moe.top_k, 8);
  EXPECT_EQ(ParseOk(kMixtral, {{"num_experts_per_tok", "7"}}).moe.top_k, 7);
  EXPECT_EQ(ParseOk(kMixtral, {{"num_experts_per_tok", "1"}}).moe.top_k, 1);
  EXPECT_EQ(ParseOk(kMixtral, {{"num_key_value_heads", "4"}}).num_key_value_heads, 4);
  EXPECT_EQ(ParseOk(kMixtral, {{"num_key_value_heads", "1"}}).num_key_value_heads, 1);
  EXPECT_EQ(ParseOk(kMixtral, {{"num_key_value_heads", std::nullopt}}).num_key_value_heads, 4);
  EXPECT_EQ(ParseOk(kMixtral, {{"vocab_size", "1"}}).vocab_size, 1);
  EXPECT_EQ(ParseOk(kMixtral, {{"sliding_window", "1"}}).sliding_window, 1);
  EXPECT_EQ(ParseOk(kDeepseek, {{"topk_group", "4"}}).moe.topk_groups, 4);
  EXPECT_EQ(ParseOk(kDeepseek, {{"topk_group", "3"}}).moe.topk_groups, 3);
  EXPECT_EQ(ParseOk(kDeepseek, {{"n_group", "2"}, {"topk_group", "1"}}).moe.num_groups, 2);
  EXPECT_EQ(ParseOk(kDeepseek, {{"first_k_dense_replace", "3"}}).layer_is_moe,
            std::vector<bool>({false, false, false}));
  EXPECT_EQ(ParseOk(kDeepseek, {{"first_k_dense_replace", "0"}}).layer_is_moe,
            std::vector<bool>({true, true, true}));
  EXPECT_EQ(ParseOk(kQwen3, {{"mlp_only_layers", "[2]"}}).layer_is_moe,
            std::vector<bool>({true, true, false}));
  EXPECT_EQ(ParseOk(kQwen3, {{"mlp_only_layers", "[0]"}}).layer_is_moe,
            std::vector<bool>({false, true, true}));
}

TEST(ModelConfigTest, AcceptedVariations) {
  // Training-only and informational fields.
  EXPECT_TRUE(ParseMutated(kMixtral, {{"router_jitter_noise", "0.1"}}).ok());
  EXPECT_TRUE(ParseMutated(kMixtral, {{"some_future_field", "{\"x\": [1]}"}}).ok());
  // Mixtral sliding window applies to every layer.
  const ModelConfig window = ParseOk(kMixtral, {{"sliding_window", "4096"}});
  EXPECT_EQ(window.sliding_window, 4096);
  EXPECT_EQ(window.layer_sliding, std::vector<bool>({true, true}));
  // Linear RoPE with factor 1 is the default RoPE.
  EXPECT_EQ(ParseOk(kMixtral, {{"rope_parameters.rope_type", "\"linear\""},
                               {"rope_parameters.factor", "1.0"}})
                .rope.scaling,
            RopeConfig::Scaling::kNone);
  // Legacy 4.x keys alone.
  const ModelConfig legacy = ParseOk(kDeepseek, {{"rope_parameters", std::nullopt}});
  EXPECT_EQ(legacy.rope.scaling, RopeConfig::Scaling::kYarn);
  EXPECT_DOUBLE_EQ(legacy.rope.factor, 4.0);
  EXPECT_EQ(legacy.rope.original_max_position_embeddings, 64);
  EXPECT_EQ(ParseOk(kMixtral, {{"rope_parameters", std::nullopt}}).rope.theta, 1e6);
  // Qwen: decoder_sparse_step, sliding window per layer, norm_topk_prob both ways.
  EXPECT_EQ(ParseOk(kQwen3, {{"decoder_sparse_step", "2"}, {"mlp_only_layers", "[]"}}).layer_is_moe,
            std::vector<bool>({false, true, false}));
  const ModelConfig qwin = ParseOk(
      kQwen3,
      {{"use_sliding_window", "true"}, {"sliding_window", "16"}, {"max_window_layers", "1"}});
  EXPECT_EQ(qwin.sliding_window, 16);
  // Qwen3-MoE slides every layer; max_window_layers is not a Qwen3MoeConfig field (HF 5.23).
  EXPECT_EQ(qwin.layer_sliding, std::vector<bool>({true, true, true}));
  const ModelConfig q2win =
      ParseOk(kQwen2, {{"use_sliding_window", "true"},
                       {"sliding_window", "8"},
                       {"layer_types", "[\"sliding_attention\", \"full_attention\"]"}});
  EXPECT_EQ(q2win.layer_sliding, std::vector<bool>({true, false}));
  EXPECT_TRUE(ParseOk(kQwen2, {{"norm_topk_prob", "true"}}).moe.renormalize);
  EXPECT_FALSE(ParseOk(kQwen2, {{"qkv_bias", "false"}}).attention_bias);
  // DeepSeek: greedy top-k, full-rank q, torch_dtype (4.x name).
  const ModelConfig greedy = ParseOk(kDeepseek, {{"topk_method", "\"greedy\""}});
  EXPECT_FALSE(greedy.moe.use_expert_bias);
  EXPECT_EQ(greedy.moe.num_groups, 1);
  EXPECT_TRUE(ParseOk(kDeepseek, {{"topk_method", "\"noaux_tc\""}}).moe.use_expert_bias);
  EXPECT_EQ(ParseOk(kDeepseek, {{"q_lora_rank", "null"}}).mla.q_lora_rank, 0);
  const ModelConfig bf16 =
      ParseOk(kDeepseek, {{"dtype", std::nullopt}, {"torch_dtype", "\"bfloat16\""}});
  EXPECT_EQ(bf16.dtype_name, "bfloat16");
  EXPECT_TRUE(bf16.has_dtype);
  EXPECT_EQ(bf16.dtype, DType::kBF16);
  EXPECT_FALSE(ParseOk(kDeepseek, {{"dtype", std::nullopt}}).has_dtype);
}

}  // namespace
}  // namespace moe
