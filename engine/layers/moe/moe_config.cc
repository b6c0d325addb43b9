#include "engine/layers/moe/moe_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("moe: ", what));
}

absl::Status CheckPositive(absl::string_view field, int64_t v) {
  if (v <= 0) return Invalid(absl::StrCat(field, "=", v, " must be positive"));
  return absl::OkStatus();
}

absl::string_view YesNo(bool b) { return b ? "yes" : "no"; }

absl::string_view Precision(bool run_dtype) { return run_dtype ? "run_dtype" : "fp32"; }

}  // namespace

absl::Status MoeConfig::Validate() const {
  MOE_RETURN_IF_ERROR(CheckPositive("num_experts", num_experts));
  MOE_RETURN_IF_ERROR(CheckPositive("top_k", top_k));
  MOE_RETURN_IF_ERROR(CheckPositive("hidden", hidden));
  MOE_RETURN_IF_ERROR(CheckPositive("inter", inter));
  // Forced balanced routing may repeat an expert within a token (MOE_SEMANTICS 7.10); the
  // counts come from a bincount of the ids, so they still match the dispatched rows.
  if (!force_balanced && top_k > num_experts) {
    return Invalid(absl::StrCat("top_k=", top_k, " exceeds num_experts=", num_experts));
  }
  MOE_RETURN_IF_ERROR(CheckPositive("num_groups", num_groups));
  MOE_RETURN_IF_ERROR(CheckPositive("topk_groups", topk_groups));
  if (topk_groups > num_groups) {
    return Invalid(absl::StrCat("topk_groups=", topk_groups, " exceeds num_groups=", num_groups));
  }
  if (num_groups > 1) {
    if (num_experts % num_groups != 0) {
      return Invalid(absl::StrCat("num_experts=", num_experts,
                                  " is not divisible by num_groups=", num_groups));
    }
    const int64_t per_group = num_experts / num_groups;
    if (per_group < 2) {
      return Invalid(absl::StrCat("num_experts=", num_experts, " / num_groups=", num_groups,
                                  " leaves ", per_group,
                                  " expert per group; group scores need at least 2"));
    }
    // MOE_SEMANTICS 7.9: fewer candidates than top_k would select excluded experts.
    if (!force_balanced && topk_groups * per_group < top_k) {
      return Invalid(absl::StrCat("topk_groups=", topk_groups, " groups of ", per_group,
                                  " experts hold ", topk_groups * per_group,
                                  " candidates, fewer than top_k=", top_k));
    }
  }
  if (!std::isfinite(route_scale)) {
    return Invalid(absl::StrCat("route_scale=", route_scale, " is not finite"));
  }
  if (num_shared_experts < 0) {
    return Invalid(absl::StrCat("num_shared_experts=", num_shared_experts, " is negative"));
  }
  if (shared_inter < 0) {
    return Invalid(absl::StrCat("shared_inter=", shared_inter, " is negative"));
  }
  if (num_shared_experts > 0 && shared_inter == 0) {
    return Invalid(
        absl::StrCat("num_shared_experts=", num_shared_experts, " needs shared_inter > 0, got 0"));
  }
  if (shared_gate && num_shared_experts == 0) {
    return Invalid("shared_gate needs num_shared_experts > 0, got 0");
  }
  if (!(capacity_factor >= 0.0f) || !std::isfinite(capacity_factor)) {
    return Invalid(absl::StrCat("capacity_factor=", capacity_factor,
                                " must be 0 (dropless) or finite and positive"));
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return Invalid(absl::StrCat("dtype=", DTypeName(dtype), " is not supported (f32, bf16)"));
  }
  return absl::OkStatus();
}

std::string MoeConfig::ToString() const {
  return absl::StrCat(
      "moe{num_experts=", num_experts, " top_k=", top_k, " hidden=", hidden, " inter=", inter,
      " score=", score == ScoreFunction::kSoftmax ? "softmax" : "sigmoid",
      " expert_bias=", YesNo(use_expert_bias), " num_groups=", num_groups,
      " topk_groups=", topk_groups, " renormalize=", YesNo(renormalize),
      " route_scale=", route_scale, " score_before_experts=", YesNo(score_before_experts),
      " num_shared_experts=", num_shared_experts, " shared_inter=", shared_inter,
      " shared_gate=", YesNo(shared_gate), " force_balanced=", YesNo(force_balanced),
      " capacity_factor=", capacity_factor,
      " router_gemm=", Precision(router_gemm == RouterGemm::kRunDType),
      " route_weights=", Precision(route_weights == RouteWeights::kRunDType),
      " dtype=", DTypeName(dtype), "}");
}

}  // namespace moe
