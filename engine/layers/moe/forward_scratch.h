// The scratch tensors of one MoeBlock::Forward over T tokens, all carved from the block's
// Workspace: their total size is known before the call, so the hot path never allocates.
#ifndef MOE_ENGINE_LAYERS_MOE_FORWARD_SCRATCH_H_
#define MOE_ENGINE_LAYERS_MOE_FORWARD_SCRATCH_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/layers/moe/moe_config.h"

namespace moe {

// N = T * K routed slots, S = num_shared_experts * shared_inter. Tensors a config does not
// need (x32 for f32, the shared ones without shared experts) stay default-constructed.
struct ForwardScratch {
  Tensor x32;                // f32 [T, D]    x cast for the router GEMM (bf16 only)
  Tensor logits;             // f32 [T, E]
  Tensor ids;                // i32 [N]
  Tensor weights;            // f32 [N]
  Tensor counts;             // i64 [E]
  Tensor sorted_slots;       // i32 [N]       slot at each dispatch row
  Tensor slot_to_row;        // i32 [N]       its inverse (-1: dropped)
  Tensor rows;               // dtype [N, D]  expert inputs, then expert outputs
  Tensor gate_up;            // dtype [N, 2I]
  Tensor act;                // dtype [N, I]
  Tensor shared_gate_up;     // dtype [T, 2S]
  Tensor shared_act;         // dtype [T, S]
  Tensor shared_gate_logit;  // f32 [T]       only with config.shared_gate
  Tensor result;             // dtype [T, D]  the output when `out` overlaps x
};

// Workspace bytes (alignment included) that TakeForwardScratch needs for `tokens`;
// nondecreasing in `tokens`.
size_t ForwardScratchBytes(const MoeConfig& config, int64_t tokens);

// Takes every tensor from `workspace`, which must have ForwardScratchBytes free.
absl::StatusOr<ForwardScratch> TakeForwardScratch(const MoeConfig& config, int64_t tokens,
                                                  Workspace* workspace);

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_FORWARD_SCRATCH_H_
