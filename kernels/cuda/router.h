// Router on a CUDA device: fp32 scores (softmax | sigmoid), selection-only expert bias, the
// group limit, top-k with ties to the lower id, weights, renormalisation and route_scale, and
// force_balanced, as RouterArgs in kernels/backend.h states them. Bit for bit the CPU backend's
// ids and weights (kernels/cpu/router.cc) for every non-NaN result: the same fp32 operations in
// the same order (the softmax sum's 8 strided partials and their tree), each correctly rounded
// (no fma contraction), and the CPU's exp. NaN rows rank and select as on the CPU (a NaN choice
// ranks below every number; ties to the lower id); a NaN weight is a NaN on both, its sign and
// payload may differ.
//
// - args are validated by Backend (kernels/backend.cc); logits, expert_bias, ids and weights
//   are device memory of the current device; ids / weights must not overlap the inputs.
// - Enqueued on `stream` (asynchronous); allocates nothing; deterministic: one warp routes one
//   token from its own logits row and the bias only, so the result depends on neither the batch
//   nor the launch shape.
// - tokens == 0 enqueues nothing. Returns the Status of a failed CUDA call (the launch) naming
//   the call and file:line; there are no data-dependent errors.
#ifndef MOE_KERNELS_CUDA_ROUTER_H_
#define MOE_KERNELS_CUDA_ROUTER_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// ids [tokens, top_k] (ascending expert id within a token; slot order under force_balanced) and
// weights [tokens, top_k] from logits [tokens, num_experts].
absl::Status LaunchRouter(const RouterArgs& args, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_ROUTER_H_
