// Deterministic integer bincount on a CUDA device: the first op of the CUDA backend.
#ifndef MOE_KERNELS_CUDA_BINCOUNT_H_
#define MOE_KERNELS_CUDA_BINCOUNT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// counts[b] = number of i in [0, n) with ids[i] == b, for b in [0, num_bins): exact 64-bit
// integers (per-block shared-memory counts merged with integer atomics, so the result does not
// depend on scheduling or launch configuration). An id outside [0, num_bins) is not counted in
// `counts`; how many there were is written to *invalid_ids, so the caller can report
// InvalidArgument once it has synchronized.
//
// args.ids [n], args.counts [num_bins] and invalid_ids [1] are device memory of the current
// device. Enqueued on `stream` (asynchronous); allocates nothing. Every output is overwritten,
// also when n = 0.
//
// Returns InvalidArgument for a negative n, num_bins <= 0 or a null pointer (checked on the
// host before any CUDA call), or the Status of a failed CUDA call naming the call and file:line.
absl::Status LaunchBincount(const BincountArgs& args, uint64_t* invalid_ids, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_BINCOUNT_H_
