// The dispatch order on a CUDA device: a stable counting sort of the slots by expert id, equal
// to the CPU backend's (kernels/cpu/bincount.cc) row for row.
#ifndef MOE_KERNELS_CUDA_EXPERT_ORDER_H_
#define MOE_KERNELS_CUDA_EXPERT_ORDER_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// sorted_slots[r] = the slot placed at row r, slot_to_row its inverse: experts ascending, slots
// ascending within an expert (ExpertOrderArgs). Deterministic, no atomics in the placement: a
// block per expert range walks all n ids in order and places its experts' slots by block-wide
// prefix counts, so the work is O(n * num_experts / 32) warp steps and O(n * blocks) id reads
// (cached); fine for the expert counts of MoE models (<= a few hundred).
//
// args are validated by Backend (kernels/backend.cc); pointers are device memory of the
// current device. Enqueued on `stream` (asynchronous); allocates nothing.
// `error` is device memory of 2 uint64 words, overwritten. The counts are checked first, as on
// the CPU; with bad counts nothing is written. With an id outside [0, num_experts) or an expert
// that occurs more often than its count, the outputs are unspecified (the CPU backend leaves
// them partly written too). The Status returned covers the launch only (a failed CUDA call,
// naming it and file:line); once the stream has passed the call, ExpertOrderDataError (given
// the words copied to the host) or FinishExpertOrder (which synchronizes `stream`) gives the
// data error with the CPU backend's message (InvalidArgument):
//   "expert_order: counts[<e>]=<c> is negative or makes the counts exceed n=<n>"
//   "expert_order: counts sum to <total>, expected n=<n>"
//   "expert_order: ids[<i>]=<id> is outside [0, num_experts=<E>)"
//   "expert_order: expert <id> occurs more often than counts[<id>]=<c>"
absl::Status LaunchExpertOrder(const ExpertOrderArgs& args, uint64_t* error, cudaStream_t stream);
absl::Status ExpertOrderDataError(const ExpertOrderArgs& args, const uint64_t host_error[2]);
absl::Status FinishExpertOrder(const ExpertOrderArgs& args, const uint64_t* error,
                               cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_EXPERT_ORDER_H_
