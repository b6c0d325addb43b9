#include "engine/layers/moe/moe_weights.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("moe: ", what));
}

absl::Status CheckAbsent(absl::string_view name, const Tensor& t, absl::string_view why) {
  if (IsGiven(t)) return Invalid(absl::StrCat(name, " is given but ", why));
  return absl::OkStatus();
}

absl::Status CheckExpertList(absl::string_view name, const std::vector<Tensor>& list,
                             int64_t num_experts, ExpertRange experts, const Shape& want) {
  if (static_cast<int64_t>(list.size()) != experts.count) {
    const std::string expected =
        experts.count == num_experts
            ? absl::StrCat("num_experts=", num_experts)
            : absl::StrCat(experts.count, " (experts [", experts.first, ", ", experts.end(),
                           ") of num_experts=", num_experts, ")");
    return Invalid(absl::StrCat(name, " has ", list.size(), " tensors, expected ", expected));
  }
  for (size_t j = 0; j < list.size(); ++j) {
    MOE_RETURN_IF_ERROR(
        CheckHostWeight(absl::StrCat(name, "[", experts.first + j, "]"), list[j], want));
  }
  return absl::OkStatus();
}

}  // namespace

bool IsGiven(const Tensor& t) { return t.data() != nullptr || t.rank() > 0; }

absl::Status CheckHostWeight(absl::string_view name, const Tensor& t, const Shape& want) {
  if (!IsGiven(t)) return Invalid(absl::StrCat(name, " is missing"));
  if (t.shape() != want) {
    return Invalid(
        absl::StrCat(name, " has shape ", t.shape().ToString(), ", expected ", want.ToString()));
  }
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16) {
    return Invalid(
        absl::StrCat(name, " has dtype ", DTypeName(t.dtype()), ", expected f32, bf16 or f16"));
  }
  if (t.device() != Device::Cpu()) {
    return Invalid(
        absl::StrCat(name, " is on ", t.device().ToString(), ", expected a host (cpu) tensor"));
  }
  if (t.data() == nullptr && t.numel() > 0) return Invalid(absl::StrCat(name, " has no data"));
  return absl::OkStatus();
}

absl::Status CheckMoeWeights(const MoeConfig& c, const MoeWeights& w) {
  return CheckMoeWeights(c, w, ExpertRange{0, c.num_experts});
}

absl::Status CheckMoeWeights(const MoeConfig& c, const MoeWeights& w, ExpertRange experts) {
  const int64_t e = c.num_experts, d = c.hidden, i = c.inter;
  if (experts.first < 0 || experts.count < 0 || experts.end() > e) {
    return Invalid(absl::StrCat("experts [", experts.first, ", ", experts.end(),
                                ") are outside [0, num_experts=", e, ")"));
  }
  MOE_RETURN_IF_ERROR(CheckHostWeight("gate", w.gate, Shape({e, d})));
  if (c.use_expert_bias) {
    MOE_RETURN_IF_ERROR(CheckHostWeight("expert_bias", w.expert_bias, Shape({e})));
  } else {
    MOE_RETURN_IF_ERROR(CheckAbsent("expert_bias", w.expert_bias, "use_expert_bias is false"));
  }
  MOE_RETURN_IF_ERROR(CheckExpertList("w1", w.w1, e, experts, Shape({i, d})));
  MOE_RETURN_IF_ERROR(CheckExpertList("w3", w.w3, e, experts, Shape({i, d})));
  MOE_RETURN_IF_ERROR(CheckExpertList("w2", w.w2, e, experts, Shape({d, i})));
  const int64_t s = c.num_shared_experts * c.shared_inter;
  if (s > 0) {
    MOE_RETURN_IF_ERROR(CheckHostWeight("shared_w1", w.shared_w1, Shape({s, d})));
    MOE_RETURN_IF_ERROR(CheckHostWeight("shared_w3", w.shared_w3, Shape({s, d})));
    MOE_RETURN_IF_ERROR(CheckHostWeight("shared_w2", w.shared_w2, Shape({d, s})));
  } else {
    constexpr absl::string_view kWhy = "num_shared_experts is 0";
    MOE_RETURN_IF_ERROR(CheckAbsent("shared_w1", w.shared_w1, kWhy));
    MOE_RETURN_IF_ERROR(CheckAbsent("shared_w3", w.shared_w3, kWhy));
    MOE_RETURN_IF_ERROR(CheckAbsent("shared_w2", w.shared_w2, kWhy));
  }
  if (c.shared_gate) {
    MOE_RETURN_IF_ERROR(CheckHostWeight("shared_gate", w.shared_gate, Shape({1, d})));
  } else {
    MOE_RETURN_IF_ERROR(CheckAbsent("shared_gate", w.shared_gate, "config.shared_gate is false"));
  }
  return absl::OkStatus();
}

}  // namespace moe
