// RmsNorm and Rope on a CUDA device, bit for bit the CPU backend's results
// (kernels/cpu/rmsnorm.cc, rope.cc) for every non-NaN input: the contract's 8-lane sum order,
// the same fp32 operations each correctly rounded (no fma contraction), one rounding to bf16.
// A NaN result is a NaN on both, its sign and payload may differ.
//
// Common to both: args are validated by Backend (kernels/backend.cc); pointers are device
// memory of the current device; enqueued on `stream` (asynchronous); allocates nothing;
// deterministic; an op with no elements launches no kernel. Returns the Status of a failed
// CUDA call naming the call and file:line.
#ifndef MOE_KERNELS_CUDA_NORM_ROPE_H_
#define MOE_KERNELS_CUDA_NORM_ROPE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// One block per row. Element j's square goes to lane j mod 8, each lane a sequential fp32 sum
// in ascending j (the row is staged through shared memory in 2048-element chunks so that the
// loads stay coalesced), the lanes added as backend.h says; then the row is scaled in a second
// sweep that re-reads x from cache. out may equal x (same ld).
absl::Status LaunchRmsNorm(const RmsNormArgs& args, cudaStream_t stream);

// Rope in place. Positions are checked on the device before anything is written, in two
// kernels: the first finds the first row whose position is outside [0, max_positions), the
// second rotates only when there is none.
//
// `error` is device memory of 2 uint64 words, overwritten: word 0 gets the first bad row
// (~0 when none), word 1 that row's position. The Status this call returns covers the launch
// only; once the stream has passed the call, RopeDataError (given the words copied to the
// host) or FinishRope (which synchronizes `stream`) gives the data error as the CPU backend
// reports it.
absl::Status LaunchRope(const RopeArgs& args, uint64_t* error, cudaStream_t stream);

// OK when host_error[0] is ~0, else InvalidArgument
// "rope: positions[<row>]=<position> is outside [0, max_positions=<n>)".
absl::Status RopeDataError(const RopeArgs& args, const uint64_t host_error[2]);

// Waits for `stream`, reads the 2 error words at `error` (device) and returns RopeDataError,
// or the Status of the failed CUDA call.
absl::Status FinishRope(const RopeArgs& args, const uint64_t* error, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_NORM_ROPE_H_
