#include "engine/model/model_config.h"

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/json.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

constexpr absl::string_view kSupportedTypes = "mixtral, qwen3_moe, qwen2_moe, deepseek_v3";

// Typed access to the members of one JSON object; messages start with the source and name
// the field as `prefix` + key ("rope_parameters.factor").
class Fields {
 public:
  Fields(const JsonValue& object, absl::string_view source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  // The member, or null if absent or JSON null.
  const JsonValue* Get(absl::string_view key) const {
    const JsonValue* v = object_.Find(key);
    return v == nullptr || v->is_null() ? nullptr : v;
  }
  bool Has(absl::string_view key) const { return Get(key) != nullptr; }
  std::string Name(absl::string_view key) const { return absl::StrCat(prefix_, key); }

  absl::Status Invalid(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", what));
  }
  absl::Status Unsupported(absl::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(source_, ": ", what, " is not supported"));
  }
  absl::Status Missing(absl::string_view key) const {
    return Invalid(absl::StrCat("missing required field \"", Name(key), "\""));
  }

  absl::StatusOr<std::optional<int64_t>> OptInt(absl::string_view key) const {
    const JsonValue* v = Get(key);
    if (v == nullptr) return std::optional<int64_t>();
    const double d = v->number();
    if (v->kind() != JsonValue::Kind::kNumber || d != std::floor(d) || std::fabs(d) > 9.0e15) {
      return WrongType(key, *v, "an integer");
    }
    return std::optional<int64_t>(static_cast<int64_t>(d));
  }
  absl::StatusOr<int64_t> Int(absl::string_view key) const {
    MOE_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptInt(key));
    if (!v.has_value()) return Missing(key);
    return *v;
  }
  absl::StatusOr<int64_t> IntOr(absl::string_view key, int64_t fallback) const {
    MOE_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptInt(key));
    return v.value_or(fallback);
  }
  // A required integer > 0.
  absl::StatusOr<int64_t> Positive(absl::string_view key) const {
    MOE_ASSIGN_OR_RETURN(int64_t v, Int(key));
    if (v <= 0) return Invalid(absl::StrCat(Name(key), "=", v, " must be positive"));
    return v;
  }

  absl::StatusOr<std::optional<double>> OptNumber(absl::string_view key) const {
    const JsonValue* v = Get(key);
    if (v == nullptr) return std::optional<double>();
    if (v->kind() != JsonValue::Kind::kNumber) return WrongType(key, *v, "a number");
    return std::optional<double>(v->number());
  }
  absl::StatusOr<double> Number(absl::string_view key) const {
    MOE_ASSIGN_OR_RETURN(std::optional<double> v, OptNumber(key));
    if (!v.has_value()) return Missing(key);
    return *v;
  }
  absl::StatusOr<double> NumberOr(absl::string_view key, double fallback) const {
    MOE_ASSIGN_OR_RETURN(std::optional<double> v, OptNumber(key));
    return v.value_or(fallback);
  }

  absl::StatusOr<bool> BoolOr(absl::string_view key, bool fallback) const {
    const JsonValue* v = Get(key);
    if (v == nullptr) return fallback;
    if (v->kind() != JsonValue::Kind::kBool) return WrongType(key, *v, "a boolean");
    return v->bool_value();
  }

  absl::StatusOr<std::optional<std::string>> OptString(absl::string_view key) const {
    const JsonValue* v = Get(key);
    if (v == nullptr) return std::optional<std::string>();
    if (v->kind() != JsonValue::Kind::kString) return WrongType(key, *v, "a string");
    return std::optional<std::string>(v->string());
  }
  absl::StatusOr<std::string> String(absl::string_view key) const {
    MOE_ASSIGN_OR_RETURN(std::optional<std::string> v, OptString(key));
    if (!v.has_value()) return Missing(key);
    return *v;
  }

  // An object member, or null if absent.
  absl::StatusOr<const JsonValue*> OptObject(absl::string_view key) const {
    const JsonValue* v = Get(key);
    if (v != nullptr && v->kind() != JsonValue::Kind::kObject) {
      return WrongType(key, *v, "an object");
    }
    return v;
  }
  absl::StatusOr<const JsonValue*> OptArray(absl::string_view key) const {
    const JsonValue* v = Get(key);
    if (v != nullptr && v->kind() != JsonValue::Kind::kArray) return WrongType(key, *v, "an array");
    return v;
  }

  absl::Status WrongType(absl::string_view key, const JsonValue& v,
                         absl::string_view expected) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", v.line(), ":", v.column(),
                                                   ": field \"", Name(key), "\" must be ", expected,
                                                   ", got ", v.KindName()));
  }

 private:
  const JsonValue& object_;
  absl::string_view source_;
  std::string prefix_;
};

// The expert count under either name (transformers maps num_local_experts <-> num_experts).
absl::StatusOr<int64_t> NumExperts(const Fields& f) {
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> a, f.OptInt("num_experts"));
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> b, f.OptInt("num_local_experts"));
  if (a.has_value() && b.has_value() && *a != *b) {
    return f.Invalid(absl::StrCat("num_experts=", *a, " disagrees with num_local_experts=", *b));
  }
  if (!a.has_value() && !b.has_value()) return f.Missing("num_experts");
  const int64_t n = a.has_value() ? *a : *b;
  if (n <= 0) {
    return f.Invalid(absl::StrCat(a.has_value() ? "num_experts" : "num_local_experts", "=", n,
                                  " must be positive"));
  }
  return n;
}

absl::Status ReadTopK(const Fields& f, int64_t num_experts, MoeConfig* moe) {
  MOE_ASSIGN_OR_RETURN(moe->top_k, f.Positive("num_experts_per_tok"));
  if (moe->top_k > num_experts) {
    return f.Invalid(absl::StrCat("num_experts_per_tok=", moe->top_k,
                                  " exceeds the number of experts ", num_experts));
  }
  moe->num_experts = num_experts;
  return absl::OkStatus();
}

absl::Status ReadYarn(const Fields& r, RopeConfig* rope) {
  rope->scaling = RopeConfig::Scaling::kYarn;
  MOE_ASSIGN_OR_RETURN(rope->factor, r.Number("factor"));
  if (!(rope->factor >= 1.0)) {
    return r.Invalid(absl::StrCat(r.Name("factor"), "=", rope->factor, " must be >= 1"));
  }
  MOE_ASSIGN_OR_RETURN(rope->original_max_position_embeddings,
                       r.Positive("original_max_position_embeddings"));
  MOE_ASSIGN_OR_RETURN(rope->beta_fast, r.NumberOr("beta_fast", 32.0));
  MOE_ASSIGN_OR_RETURN(rope->beta_slow, r.NumberOr("beta_slow", 1.0));
  // Absent = 0, as HF treats a missing (falsy) mscale: it changes the YaRN attention factor.
  MOE_ASSIGN_OR_RETURN(rope->mscale, r.NumberOr("mscale", 0.0));
  MOE_ASSIGN_OR_RETURN(rope->mscale_all_dim, r.NumberOr("mscale_all_dim", 0.0));
  if (r.Has("attention_factor")) return r.Unsupported(r.Name("attention_factor"));
  return absl::OkStatus();
}

// One RoPE description: `rope_parameters` (5.x; theta inside) or `rope_scaling` (4.x; may be
// absent, theta from the top-level `rope_theta`).
absl::StatusOr<RopeConfig> ReadRopeBlock(const Fields& top, const JsonValue* block,
                                         absl::string_view block_name, bool theta_inside,
                                         absl::string_view source) {
  RopeConfig rope;
  if (!theta_inside) {
    MOE_ASSIGN_OR_RETURN(rope.theta, top.Number("rope_theta"));
  }
  if (block == nullptr) return rope;
  const Fields r(*block, source, absl::StrCat(block_name, "."));
  if (theta_inside) {
    MOE_ASSIGN_OR_RETURN(rope.theta, r.Number("rope_theta"));
  }
  MOE_ASSIGN_OR_RETURN(std::optional<std::string> type, r.OptString("rope_type"));
  if (!type.has_value()) {
    MOE_ASSIGN_OR_RETURN(type, r.OptString("type"));
  }
  const std::string t = type.value_or("default");
  MOE_ASSIGN_OR_RETURN(double partial, r.NumberOr("partial_rotary_factor", 1.0));
  if (partial != 1.0) {
    return r.Unsupported(absl::StrCat(r.Name("partial_rotary_factor"), "=", partial));
  }
  if (t == "default") return rope;
  if (t == "yarn") {
    MOE_RETURN_IF_ERROR(ReadYarn(r, &rope));
    return rope;
  }
  if (t == "linear") {
    MOE_ASSIGN_OR_RETURN(double factor, r.Number("factor"));
    if (factor == 1.0) return rope;
  }
  return r.Unsupported(absl::StrCat(r.Name("rope_type"), "=\"", t, "\""));
}

absl::StatusOr<RopeConfig> ReadRope(const Fields& f, absl::string_view source) {
  MOE_ASSIGN_OR_RETURN(const JsonValue* params, f.OptObject("rope_parameters"));
  MOE_ASSIGN_OR_RETURN(const JsonValue* legacy, f.OptObject("rope_scaling"));
  if (params == nullptr) return ReadRopeBlock(f, legacy, "rope_scaling", false, source);
  MOE_ASSIGN_OR_RETURN(RopeConfig rope, ReadRopeBlock(f, params, "rope_parameters", true, source));
  // The 4.x keys that 5.x still writes must describe the same RoPE.
  MOE_ASSIGN_OR_RETURN(std::optional<double> theta, f.OptNumber("rope_theta"));
  if (theta.has_value() && *theta != rope.theta) {
    return f.Invalid(absl::StrCat("rope_theta=", *theta,
                                  " disagrees with rope_parameters.rope_theta=", rope.theta));
  }
  if (theta.has_value() && legacy != nullptr) {
    absl::StatusOr<RopeConfig> old = ReadRopeBlock(f, legacy, "rope_scaling", false, source);
    if (old.ok() && (old->scaling != rope.scaling || old->factor != rope.factor)) {
      return f.Invalid(absl::StrCat("rope_scaling (factor=", old->factor,
                                    ") disagrees with rope_parameters (factor=", rope.factor, ")"));
    }
  }
  return rope;
}

// Qwen: MoE on layer i iff i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
absl::Status QwenLayers(const Fields& f, ModelConfig* c) {
  MOE_ASSIGN_OR_RETURN(int64_t step, f.IntOr("decoder_sparse_step", 1));
  if (step <= 0) return f.Invalid(absl::StrCat("decoder_sparse_step=", step, " must be positive"));
  for (int64_t i = 0; i < c->num_hidden_layers; ++i) c->layer_is_moe[i] = (i + 1) % step == 0;
  MOE_ASSIGN_OR_RETURN(const JsonValue* only, f.OptArray("mlp_only_layers"));
  if (only == nullptr) return absl::OkStatus();
  for (const JsonValue& v : only->array()) {
    const double d = v.number();
    if (v.kind() != JsonValue::Kind::kNumber || d != std::floor(d)) {
      return f.WrongType("mlp_only_layers", v, "an array of integers");
    }
    if (d < 0 || d >= c->num_hidden_layers) {
      return f.Invalid(absl::StrCat("mlp_only_layers entry ", d, " is outside [0, ",
                                    c->num_hidden_layers, ") (num_hidden_layers)"));
    }
    c->layer_is_moe[static_cast<int64_t>(d)] = false;
  }
  return absl::OkStatus();
}

// Qwen: a window only with use_sliding_window; which layers, as transformers 5.23 does it:
// Qwen3-MoE slides every layer: modeling_qwen3_moe.py:472 builds one sliding mask for all
// layers, and Qwen3MoeConfig has no layer_types or max_window_layers (both keys ignored).
// Qwen2-MoE: per layer from layer_types (modeling_qwen2_moe.py:487-496), which
// configuration_qwen2_moe.py:114-120 derives when absent as: layer i slides iff i is even and
// i < max_window_layers (default 28) -- not the dense Qwen2 / Qwen3 rule i >= max_window_layers.
absl::Status QwenSliding(const Fields& f, ModelConfig* c) {
  MOE_ASSIGN_OR_RETURN(bool use, f.BoolOr("use_sliding_window", false));
  if (!use) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(c->sliding_window, f.Positive("sliding_window"));
  if (c->family == ModelFamily::kQwen3Moe) {
    c->layer_sliding.assign(c->num_hidden_layers, true);
    return absl::OkStatus();
  }
  MOE_ASSIGN_OR_RETURN(const JsonValue* types, f.OptArray("layer_types"));
  if (types == nullptr) {
    MOE_ASSIGN_OR_RETURN(int64_t bound, f.IntOr("max_window_layers", 28));
    for (int64_t i = 0; i < c->num_hidden_layers; ++i) {
      c->layer_sliding[i] = i % 2 == 0 && i < bound;
    }
    return absl::OkStatus();
  }
  if (static_cast<int64_t>(types->array().size()) != c->num_hidden_layers) {
    return f.Invalid(absl::StrCat("layer_types has ", types->array().size(),
                                  " entries, num_hidden_layers=", c->num_hidden_layers));
  }
  for (int64_t i = 0; i < c->num_hidden_layers; ++i) {
    const std::string& t = types->array()[i].string();
    if (t != "full_attention" && t != "sliding_attention") {
      return f.Unsupported(absl::StrCat("layer_types[", i, "]=\"", t, "\""));
    }
    c->layer_sliding[i] = t == "sliding_attention";
  }
  return absl::OkStatus();
}

absl::Status ReadMixtral(const Fields& f, ModelConfig* c) {
  MOE_ASSIGN_OR_RETURN(int64_t experts, NumExperts(f));
  MOE_RETURN_IF_ERROR(ReadTopK(f, experts, &c->moe));
  c->moe.inter = c->intermediate_size;
  c->moe.score = ScoreFunction::kSoftmax;
  c->moe.renormalize = true;
  // transformers 5.23 modeling_mixtral.py:105-108, MixtralTopKRouter.forward:
  // router_logits = F.linear(hidden_states, self.weight) in the model dtype, softmax on
  // router_logits.float(); the top-k weights stay fp32 into the experts' weighted sum.
  c->moe.router_gemm = RouterGemm::kRunDType;
  c->moe.route_weights = RouteWeights::kFp32;
  // router_jitter_noise only acts in training: accepted whatever its value.
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> window, f.OptInt("sliding_window"));
  if (window.has_value()) {
    if (*window <= 0) {
      return f.Invalid(absl::StrCat("sliding_window=", *window, " must be positive or null"));
    }
    c->sliding_window = *window;
    c->layer_sliding.assign(c->num_hidden_layers, true);
  }
  c->layer_is_moe.assign(c->num_hidden_layers, true);
  return absl::OkStatus();
}

absl::Status ReadQwen(const Fields& f, ModelConfig* c) {
  const bool qwen2 = c->family == ModelFamily::kQwen2Moe;
  MOE_ASSIGN_OR_RETURN(int64_t experts, NumExperts(f));
  MOE_RETURN_IF_ERROR(ReadTopK(f, experts, &c->moe));
  MOE_ASSIGN_OR_RETURN(c->moe.inter, f.Positive("moe_intermediate_size"));
  c->moe.score = ScoreFunction::kSoftmax;
  MOE_ASSIGN_OR_RETURN(c->moe.renormalize, f.BoolOr("norm_topk_prob", false));
  // transformers 5.23 modeling_qwen3_moe.py:259-264 (modeling_qwen2_moe.py:321-326),
  // Qwen*MoeTopKRouter.forward: router_logits = F.linear(hidden_states, self.weight) in the
  // model dtype, softmax(router_logits, dtype=torch.float), then
  // router_top_value.to(router_logits.dtype): the weights enter the experts' sum in the model
  // dtype. Qwen2-MoE's shared_expert_gate is a model-dtype nn.Linear too
  // (modeling_qwen2_moe.py:346, F.sigmoid(self.shared_expert_gate(x)) * shared_expert_output).
  c->moe.router_gemm = RouterGemm::kRunDType;
  c->moe.route_weights = RouteWeights::kRunDType;
  if (qwen2) {
    MOE_ASSIGN_OR_RETURN(c->moe.shared_inter, f.Positive("shared_expert_intermediate_size"));
    c->moe.num_shared_experts = 1;
    c->moe.shared_gate = true;
    MOE_ASSIGN_OR_RETURN(c->attention_bias, f.BoolOr("qkv_bias", true));
  } else {
    c->qk_norm = true;
  }
  MOE_RETURN_IF_ERROR(QwenLayers(f, c));
  return QwenSliding(f, c);
}

absl::Status ReadDeepseek(const Fields& f, ModelConfig* c) {
  MOE_ASSIGN_OR_RETURN(int64_t experts, f.Positive("n_routed_experts"));
  MOE_RETURN_IF_ERROR(ReadTopK(f, experts, &c->moe));
  MoeConfig& m = c->moe;
  MOE_ASSIGN_OR_RETURN(m.inter, f.Positive("moe_intermediate_size"));
  MOE_ASSIGN_OR_RETURN(m.num_shared_experts, f.Int("n_shared_experts"));
  if (m.num_shared_experts < 0) {
    return f.Invalid(absl::StrCat("n_shared_experts=", m.num_shared_experts, " is negative"));
  }
  m.shared_inter = m.num_shared_experts > 0 ? m.inter : 0;
  MOE_ASSIGN_OR_RETURN(std::optional<std::string> scoring, f.OptString("scoring_func"));
  if (scoring.value_or("sigmoid") != "sigmoid") {
    return f.Unsupported(absl::StrCat("scoring_func=\"", *scoring, "\""));
  }
  m.score = ScoreFunction::kSigmoid;
  // transformers 5.23 modeling_deepseek_v3.py:135, DeepseekV3TopkRouter.forward:
  // router_logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))
  // (the weight holds model-dtype values), and the top-k weights stay fp32 (lines 153-157).
  m.router_gemm = RouterGemm::kFp32;
  m.route_weights = RouteWeights::kFp32;
  MOE_ASSIGN_OR_RETURN(std::optional<std::string> method, f.OptString("topk_method"));
  const std::string topk_method = method.value_or("noaux_tc");
  if (topk_method != "noaux_tc" && topk_method != "greedy") {
    return f.Unsupported(absl::StrCat("topk_method=\"", topk_method, "\""));
  }
  MOE_ASSIGN_OR_RETURN(m.num_groups, f.Positive("n_group"));
  MOE_ASSIGN_OR_RETURN(m.topk_groups, f.Positive("topk_group"));
  if (m.topk_groups > m.num_groups) {
    return f.Invalid(absl::StrCat("topk_group=", m.topk_groups, " exceeds n_group=", m.num_groups));
  }
  if (experts % m.num_groups != 0) {
    return f.Invalid(
        absl::StrCat("n_routed_experts=", experts, " is not divisible by n_group=", m.num_groups));
  }
  // DeepSeek's "greedy": plain top-k over the scores, no correction bias, no group limit.
  m.use_expert_bias = topk_method == "noaux_tc";
  if (topk_method == "greedy") m.num_groups = m.topk_groups = 1;
  MOE_ASSIGN_OR_RETURN(m.renormalize, f.BoolOr("norm_topk_prob", true));
  MOE_ASSIGN_OR_RETURN(double scale, f.Number("routed_scaling_factor"));
  if (!(scale > 0) || !std::isfinite(scale)) {
    return f.Invalid(absl::StrCat("routed_scaling_factor=", scale, " must be positive"));
  }
  m.route_scale = static_cast<float>(scale);

  c->use_mla = true;
  MlaConfig& a = c->mla;
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> q_rank, f.OptInt("q_lora_rank"));
  if (q_rank.has_value() && *q_rank <= 0) {
    return f.Invalid(absl::StrCat("q_lora_rank=", *q_rank, " must be positive or null"));
  }
  a.q_lora_rank = q_rank.value_or(0);
  MOE_ASSIGN_OR_RETURN(a.kv_lora_rank, f.Positive("kv_lora_rank"));
  MOE_ASSIGN_OR_RETURN(a.qk_nope_head_dim, f.Positive("qk_nope_head_dim"));
  MOE_ASSIGN_OR_RETURN(a.qk_rope_head_dim, f.Positive("qk_rope_head_dim"));
  MOE_ASSIGN_OR_RETURN(a.v_head_dim, f.Positive("v_head_dim"));
  if (a.qk_rope_head_dim % 2 != 0) {
    return f.Invalid(absl::StrCat("qk_rope_head_dim=", a.qk_rope_head_dim, " must be even"));
  }
  c->head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> qk_head_dim, f.OptInt("qk_head_dim"));
  if (qk_head_dim.has_value() && *qk_head_dim != c->head_dim) {
    return f.Invalid(absl::StrCat("qk_head_dim=", *qk_head_dim, " is not qk_nope_head_dim=",
                                  a.qk_nope_head_dim, " + qk_rope_head_dim=", a.qk_rope_head_dim));
  }
  MOE_ASSIGN_OR_RETURN(c->rope.interleave, f.BoolOr("rope_interleave", true));

  MOE_ASSIGN_OR_RETURN(int64_t first_dense, f.Int("first_k_dense_replace"));
  if (first_dense < 0 || first_dense > c->num_hidden_layers) {
    return f.Invalid(absl::StrCat("first_k_dense_replace=", first_dense, " is outside [0, ",
                                  c->num_hidden_layers, "] (num_hidden_layers)"));
  }
  MOE_ASSIGN_OR_RETURN(int64_t freq, f.IntOr("moe_layer_freq", 1));
  if (freq <= 0) return f.Invalid(absl::StrCat("moe_layer_freq=", freq, " must be positive"));
  for (int64_t i = 0; i < c->num_hidden_layers; ++i) {
    c->layer_is_moe[i] = i >= first_dense && i % freq == 0;
  }
  return absl::OkStatus();
}

// The fields every family shares.
absl::Status ReadCommon(const Fields& f, ModelConfig* c) {
  MOE_ASSIGN_OR_RETURN(std::string act, f.String("hidden_act"));
  if (act != "silu") return f.Unsupported(absl::StrCat("hidden_act=\"", act, "\""));
  if (f.Has("quantization_config")) return f.Unsupported("quantization_config");
  MOE_ASSIGN_OR_RETURN(c->vocab_size, f.Positive("vocab_size"));
  MOE_ASSIGN_OR_RETURN(c->hidden_size, f.Positive("hidden_size"));
  MOE_ASSIGN_OR_RETURN(c->num_hidden_layers, f.Positive("num_hidden_layers"));
  MOE_ASSIGN_OR_RETURN(c->num_attention_heads, f.Positive("num_attention_heads"));
  MOE_ASSIGN_OR_RETURN(c->num_key_value_heads,
                       f.IntOr("num_key_value_heads", c->num_attention_heads));
  if (c->num_key_value_heads <= 0) {
    return f.Invalid(
        absl::StrCat("num_key_value_heads=", c->num_key_value_heads, " must be positive"));
  }
  if (c->num_attention_heads % c->num_key_value_heads != 0) {
    return f.Invalid(absl::StrCat("num_key_value_heads=", c->num_key_value_heads,
                                  " does not divide num_attention_heads=", c->num_attention_heads));
  }
  MOE_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, f.OptInt("head_dim"));
  if (c->family != ModelFamily::kDeepseekV3) {
    if (head_dim.has_value()) {
      if (*head_dim <= 0) {
        return f.Invalid(absl::StrCat("head_dim=", *head_dim, " must be positive"));
      }
      c->head_dim = *head_dim;
    } else if (c->hidden_size % c->num_attention_heads != 0) {
      return f.Invalid(absl::StrCat("num_attention_heads=", c->num_attention_heads,
                                    " does not divide hidden_size=", c->hidden_size,
                                    " (and head_dim is not given)"));
    } else {
      c->head_dim = c->hidden_size / c->num_attention_heads;
    }
  }
  MOE_ASSIGN_OR_RETURN(c->intermediate_size, f.Positive("intermediate_size"));
  MOE_ASSIGN_OR_RETURN(c->max_position_embeddings, f.Positive("max_position_embeddings"));
  MOE_ASSIGN_OR_RETURN(c->rms_norm_eps, f.Number("rms_norm_eps"));
  if (!(c->rms_norm_eps > 0) || !std::isfinite(c->rms_norm_eps)) {
    return f.Invalid(absl::StrCat("rms_norm_eps=", c->rms_norm_eps, " must be positive"));
  }
  MOE_ASSIGN_OR_RETURN(c->tie_word_embeddings, f.BoolOr("tie_word_embeddings", false));
  MOE_ASSIGN_OR_RETURN(c->attention_bias, f.BoolOr("attention_bias", false));

  MOE_ASSIGN_OR_RETURN(std::optional<std::string> dtype, f.OptString("dtype"));
  if (!dtype.has_value()) {
    MOE_ASSIGN_OR_RETURN(dtype, f.OptString("torch_dtype"));
  }
  c->dtype_name = dtype.value_or("");
  c->has_dtype = dtype.has_value() && ParseDType(*dtype, &c->dtype);
  c->layer_is_moe.assign(c->num_hidden_layers, true);
  c->layer_sliding.assign(c->num_hidden_layers, false);
  c->moe.hidden = c->hidden_size;
  return absl::OkStatus();
}

}  // namespace

absl::string_view ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kMixtral:
      return "mixtral";
    case ModelFamily::kQwen3Moe:
      return "qwen3_moe";
    case ModelFamily::kQwen2Moe:
      return "qwen2_moe";
    case ModelFamily::kDeepseekV3:
      return "deepseek_v3";
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  MOE_ASSIGN_OR_RETURN(JsonValue root, ParseJson(json_text, source));
  if (root.kind() != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the top level must be an object, got ", root.KindName()));
  }
  const Fields f(root, source);
  MOE_ASSIGN_OR_RETURN(std::string type, f.String("model_type"));
  ModelConfig c;
  bool known = false;
  for (ModelFamily family : {ModelFamily::kMixtral, ModelFamily::kQwen3Moe, ModelFamily::kQwen2Moe,
                             ModelFamily::kDeepseekV3}) {
    if (type == ModelFamilyName(family)) {
      c.family = family;
      known = true;
    }
  }
  if (!known) {
    return f.Invalid(absl::StrCat("model_type=\"", type,
                                  "\" is not supported (supported: ", kSupportedTypes, ")"));
  }
  MOE_RETURN_IF_ERROR(ReadCommon(f, &c));
  MOE_ASSIGN_OR_RETURN(c.rope, ReadRope(f, source));
  switch (c.family) {
    case ModelFamily::kMixtral:
      MOE_RETURN_IF_ERROR(ReadMixtral(f, &c));
      break;
    case ModelFamily::kQwen3Moe:
    case ModelFamily::kQwen2Moe:
      MOE_RETURN_IF_ERROR(ReadQwen(f, &c));
      break;
    case ModelFamily::kDeepseekV3:
      MOE_RETURN_IF_ERROR(ReadDeepseek(f, &c));
      break;
  }
  // Backstop: the block's own checks (group sizes, candidates >= top_k) in its field names.
  const absl::Status moe_ok = c.moe.Validate();
  if (!moe_ok.ok()) return f.Invalid(moe_ok.message());
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/config.json");
  MOE_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  return ParseModelConfig(text, path);
}

}  // namespace moe
