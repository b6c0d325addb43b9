#include "engine/layers/moe/forward_scratch.h"

#include "absl/container/inlined_vector.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

struct Entry {
  Tensor ForwardScratch::*member;
  DType dtype;
  Shape shape;
};

// Upper bound on the plan's length, so that building it never allocates.
constexpr size_t kMaxEntries = 24;

// One list drives both the sizing and the carving, so they cannot disagree.
absl::InlinedVector<Entry, kMaxEntries> Plan(const MoeConfig& c, int64_t t) {
  const int64_t n = t * c.top_k, d = c.hidden, e = c.num_experts, i = c.inter;
  const int64_t s = c.num_shared_experts * c.shared_inter;
  const bool gemm_rd = RouterGemmInRunDType(c);
  absl::InlinedVector<Entry, kMaxEntries> plan;
  if (c.dtype != DType::kF32 && !gemm_rd) {
    plan.push_back({&ForwardScratch::x32, DType::kF32, Shape({t, d})});
  }
  if (gemm_rd) plan.push_back({&ForwardScratch::logits_rd, c.dtype, Shape({t, e})});
  plan.push_back({&ForwardScratch::logits, DType::kF32, Shape({t, e})});
  plan.push_back({&ForwardScratch::ids, DType::kI32, Shape({n})});
  plan.push_back({&ForwardScratch::weights, DType::kF32, Shape({n})});
  if (RouteWeightsInRunDType(c)) {
    plan.push_back({&ForwardScratch::weights_rd, c.dtype, Shape({n})});
    plan.push_back({&ForwardScratch::row_weights, DType::kF32, Shape({n})});
  }
  plan.push_back({&ForwardScratch::counts, DType::kI64, Shape({e})});
  plan.push_back({&ForwardScratch::sorted_slots, DType::kI32, Shape({n})});
  plan.push_back({&ForwardScratch::slot_to_row, DType::kI32, Shape({n})});
  plan.push_back({&ForwardScratch::rows, c.dtype, Shape({n, d})});
  plan.push_back({&ForwardScratch::gate_up, c.dtype, Shape({n, 2 * i})});
  plan.push_back({&ForwardScratch::act, c.dtype, Shape({n, i})});
  if (s > 0) {
    plan.push_back({&ForwardScratch::shared_gate_up, c.dtype, Shape({t, 2 * s})});
    plan.push_back({&ForwardScratch::shared_act, c.dtype, Shape({t, s})});
  }
  if (c.shared_gate) {
    plan.push_back({&ForwardScratch::shared_gate_logit, DType::kF32, Shape({t})});
    if (gemm_rd) {
      plan.push_back({&ForwardScratch::shared_gate_rd, c.dtype, Shape({t})});
      plan.push_back({&ForwardScratch::shared_gate_ids, DType::kI32, Shape({t})});
      plan.push_back({&ForwardScratch::shared_gate_score, DType::kF32, Shape({t})});
    }
  }
  plan.push_back({&ForwardScratch::result, c.dtype, Shape({t, d})});
  return plan;
}

}  // namespace

bool RouterGemmInRunDType(const MoeConfig& config) {
  return config.router_gemm == RouterGemm::kRunDType && config.dtype != DType::kF32;
}

bool RouteWeightsInRunDType(const MoeConfig& config) {
  return config.route_weights == RouteWeights::kRunDType && config.dtype != DType::kF32;
}

size_t ForwardScratchBytes(const MoeConfig& config, int64_t tokens) {
  size_t bytes = 0;
  for (const Entry& e : Plan(config, tokens)) {
    bytes += Workspace::Aligned(static_cast<size_t>(e.shape.numel()) * DTypeSize(e.dtype));
  }
  return bytes;
}

absl::StatusOr<ForwardScratch> TakeForwardScratch(const MoeConfig& config, int64_t tokens,
                                                  Workspace* workspace) {
  ForwardScratch scratch;
  for (Entry& e : Plan(config, tokens)) {
    MOE_ASSIGN_OR_RETURN(scratch.*e.member, workspace->Take(e.dtype, std::move(e.shape)));
  }
  return scratch;
}

}  // namespace moe
