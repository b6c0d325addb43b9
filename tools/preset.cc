#include "tools/preset.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/dtype.h"
#include "engine/core/json.h"

namespace moe::tools {
namespace {

class FieldReader {
 public:
  FieldReader(absl::string_view file, const JsonValue& root) : file_(file), root_(root) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_, ": field \"", field, "\": ", what));
  }

  absl::Status TypeError(absl::string_view field, absl::string_view want,
                         const JsonValue& got) const {
    return Error(field, absl::StrCat("expected ", want, ", got ", got.KindName(), " (line ",
                                     got.line(), ")"));
  }

  // Each reader leaves *out unchanged when the field is absent and not required.
  absl::Status String(absl::string_view field, bool required, std::string* out) {
    const JsonValue* v = Get(field);
    if (v == nullptr) return Missing(field, required);
    if (v->kind() != JsonValue::Kind::kString) return TypeError(field, "a string", *v);
    *out = v->string();
    return absl::OkStatus();
  }

  absl::Status Bool(absl::string_view field, bool* out) {
    const JsonValue* v = Get(field);
    if (v == nullptr) return absl::OkStatus();
    if (v->kind() != JsonValue::Kind::kBool) return TypeError(field, "true or false", *v);
    *out = v->bool_value();
    return absl::OkStatus();
  }

  absl::Status Int(absl::string_view field, bool required, int64_t min_value, int64_t* out) {
    const JsonValue* v = Get(field);
    if (v == nullptr) return Missing(field, required);
    if (v->kind() != JsonValue::Kind::kNumber) return TypeError(field, "an integer", *v);
    const double d = v->number();
    // 2^53: every integer below it is exact in a double.
    if (d != std::floor(d) || std::fabs(d) > 9007199254740992.0) {
      return Error(field, absl::StrCat("expected an integer, got ", d));
    }
    if (d < static_cast<double>(min_value)) {
      return Error(field, absl::StrCat("must be at least ", min_value, ", got ", d));
    }
    *out = static_cast<int64_t>(d);
    return absl::OkStatus();
  }

  absl::Status Float(absl::string_view field, float* out) {
    const JsonValue* v = Get(field);
    if (v == nullptr) return absl::OkStatus();
    if (v->kind() != JsonValue::Kind::kNumber) return TypeError(field, "a number", *v);
    *out = static_cast<float>(v->number());
    return absl::OkStatus();
  }

  // Members that no reader asked for.
  absl::Status CheckNoUnknown() const {
    for (const auto& [name, value] : root_.members()) {
      bool known = false;
      for (const std::string& seen : asked_) known = known || seen == name;
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat(file_, ": unknown field \"", name, "\" (line ", value.line(),
                         "); known fields: ", absl::StrJoin(asked_, ", ")));
      }
    }
    return absl::OkStatus();
  }

 private:
  const JsonValue* Get(absl::string_view field) {
    asked_.emplace_back(field);
    return root_.Find(field);
  }

  absl::Status Missing(absl::string_view field, bool required) const {
    if (!required) return absl::OkStatus();
    return Error(field, "required but missing");
  }

  absl::string_view file_;
  const JsonValue& root_;
  std::vector<std::string> asked_;
};

}  // namespace

absl::StatusOr<MoePreset> ParsePreset(absl::string_view text, absl::string_view file) {
  absl::StatusOr<JsonValue> root = ParseJson(text, file);
  if (!root.ok()) return root.status();
  if (root->kind() != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": expected a JSON object at the top level, got ", root->KindName()));
  }

  MoePreset preset;
  MoeConfig& c = preset.config;
  FieldReader r(file, *root);
  std::string score;
  std::string dtype;
  int64_t seed = static_cast<int64_t>(preset.seed);
  // Field order here is the order the "known fields" list in messages shows.
  const absl::Status statuses[] = {
      r.String("name", /*required=*/true, &preset.name),
      r.String("description", false, &preset.description),
      r.String("source", false, &preset.source),
      r.Int("num_experts", true, 1, &c.num_experts),
      r.Int("top_k", true, 1, &c.top_k),
      r.Int("hidden", true, 1, &c.hidden),
      r.Int("inter", true, 1, &c.inter),
      r.String("score", true, &score),
      r.Bool("use_expert_bias", &c.use_expert_bias),
      r.Int("num_groups", false, 1, &c.num_groups),
      r.Int("topk_groups", false, 1, &c.topk_groups),
      r.Bool("renormalize", &c.renormalize),
      r.Float("route_scale", &c.route_scale),
      r.Bool("score_before_experts", &c.score_before_experts),
      r.Int("num_shared_experts", false, 0, &c.num_shared_experts),
      r.Int("shared_inter", false, 0, &c.shared_inter),
      r.Bool("shared_gate", &c.shared_gate),
      r.Bool("force_balanced", &c.force_balanced),
      r.Float("capacity_factor", &c.capacity_factor),
      r.String("dtype", false, &dtype),
      r.Int("seed", false, 0, &seed),
  };
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = r.CheckNoUnknown(); !s.ok()) return s;

  if (preset.name.empty()) return r.Error("name", "must not be empty");
  if (score == "softmax") {
    c.score = ScoreFunction::kSoftmax;
  } else if (score == "sigmoid") {
    c.score = ScoreFunction::kSigmoid;
  } else {
    return r.Error("score",
                   absl::StrCat("expected \"softmax\" or \"sigmoid\", got \"", score, "\""));
  }
  if (!dtype.empty()) {
    DType parsed;
    if (!ParseDType(dtype, &parsed) || (parsed != DType::kBF16 && parsed != DType::kF32)) {
      return r.Error("dtype", absl::StrCat("expected \"bf16\" or \"f32\", got \"", dtype, "\""));
    }
    c.dtype = parsed;
  }
  if (!std::isfinite(c.route_scale)) return r.Error("route_scale", "must be finite");
  preset.seed = static_cast<uint64_t>(seed);

  if (absl::Status s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", s.message()));
  }
  return preset;
}

absl::StatusOr<MoePreset> LoadPreset(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return ParsePreset(*text, path);
}

int64_t ExpertWeightBytes(const MoeConfig& config) {
  return 3 * config.hidden * config.inter * DTypeSize(config.dtype);
}

int64_t TotalWeightBytes(const MoeConfig& config) {
  const int64_t elt = DTypeSize(config.dtype);
  const int64_t shared = config.num_shared_experts * config.shared_inter;
  int64_t bytes = config.num_experts * config.hidden * elt;  // gate
  bytes += config.num_experts * ExpertWeightBytes(config);
  bytes += 3 * config.hidden * shared * elt;
  if (config.shared_gate && shared > 0) bytes += config.hidden * elt;
  if (config.use_expert_bias) bytes += config.num_experts * 4;
  return bytes;
}

}  // namespace moe::tools
