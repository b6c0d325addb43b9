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
// need (x32 for f32, the shared ones without shared experts, the run-dtype router ones outside
// bf16 runs that ask for them) stay default-constructed.
struct ForwardScratch {
  Tensor x32;                // f32 [T, D]    x cast for the router GEMM (bf16, RouterGemm::kFp32)
  Tensor logits_rd;          // dtype [T, E]  rounded logits (bf16, RouterGemm::kRunDType)
  Tensor logits;             // f32 [T, E]
  Tensor ids;                // i32 [N]
  Tensor weights;            // f32 [N]
  Tensor weights_rd;         // dtype [N]     weights rounded (bf16, RouteWeights::kRunDType)
  Tensor row_weights;        // f32 [N]       weights in dispatch order (same condition)
  Tensor counts;             // i64 [E]
  Tensor sorted_slots;       // i32 [N]       slot at each dispatch row
  Tensor slot_to_row;        // i32 [N]       its inverse (-1: dropped)
  Tensor rows;               // dtype [N, D]  expert inputs, then expert outputs
  Tensor gate_up;            // dtype [N, 2I]
  Tensor act;                // dtype [N, I]
  Tensor shared_gate_up;     // dtype [T, 2S]
  Tensor shared_act;         // dtype [T, S]
  Tensor shared_gate_logit;  // f32 [T]       only with config.shared_gate
  // The run-dtype shared gate (shared_gate, bf16, RouterGemm::kRunDType): the rounded logit,
  // then the rounded sigmoid; the router op's scratch for that sigmoid.
  Tensor shared_gate_rd;     // dtype [T]
  Tensor shared_gate_ids;    // i32 [T]
  Tensor shared_gate_score;  // f32 [T]
  Tensor result;             // dtype [T, D]  the output when `out` overlaps x
};

// Which of the run-dtype router steps a config takes (each false in f32 runs, where they would
// change nothing).
bool RouterGemmInRunDType(const MoeConfig& config);
bool RouteWeightsInRunDType(const MoeConfig& config);

// Workspace bytes (alignment included) that TakeForwardScratch needs for `tokens`;
// nondecreasing in `tokens`.
size_t ForwardScratchBytes(const MoeConfig& config, int64_t tokens);

// Takes every tensor from `workspace`, which must have ForwardScratchBytes free.
absl::StatusOr<ForwardScratch> TakeForwardScratch(const MoeConfig& config, int64_t tokens,
                                                  Workspace* workspace);

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_FORWARD_SCRATCH_H_
