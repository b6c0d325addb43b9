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

// One list drives both the sizing and the carving, so they cannot disagree.
absl::InlinedVector<Entry, 16> Plan(const MoeConfig& c, int64_t t) {
  const int64_t n = t * c.top_k, d = c.hidden, e = c.num_experts, i = c.inter;
  const int64_t s = c.num_shared_experts * c.shared_inter;
  absl::InlinedVector<Entry, 16> plan;
  if (c.dtype != DType::kF32) plan.push_back({&ForwardScratch::x32, DType::kF32, Shape({t, d})});
  plan.push_back({&ForwardScratch::logits, DType::kF32, Shape({t, e})});
  plan.push_back({&ForwardScratch::ids, DType::kI32, Shape({n})});
  plan.push_back({&ForwardScratch::weights, DType::kF32, Shape({n})});
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
  }
  plan.push_back({&ForwardScratch::result, c.dtype, Shape({t, d})});
  return plan;
}

}  // namespace

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
