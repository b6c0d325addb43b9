// The deterministic MoE combine on a CUDA device: a gather per token, no float atomics, bit for
// bit the CPU backend's (kernels/cpu/combine.cc) for every non-NaN input (a NaN stays a NaN,
// its sign and payload may differ).
#ifndef MOE_KERNELS_CUDA_COMBINE_H_
#define MOE_KERNELS_CUDA_COMBINE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// Largest top_k this kernel takes (a token's slots are ordered in shared memory); past it the
// launcher returns Unimplemented.
inline constexpr int64_t kCombineMaxTopK = 1024;

// out[t] as CombineArgs (kernels/backend.h): token t's slots in ascending (expert id, slot),
// acc = fma(fp32(expert_out[slot_to_row[s]]), weight[s], acc) from +0 with one rounding each
// (__fmaf_rn, as the CPU's std::fma), dropped slots (slot_to_row < 0) skipped, routed =
// round(acc), with add_to_out out[t] = round(routed + out[t]). f32 and bf16. One block per
// token, its threads over the columns.
//
// args are validated by Backend (kernels/backend.cc); pointers are device memory of the
// current device. Enqueued on `stream` (asynchronous); allocates nothing; deterministic.
// slot_to_row is checked on the device before anything is written: with an entry >= tokens *
// top_k, out is left untouched, as on the CPU. `error` is device memory of 2 uint64 words,
// overwritten: word 0 the first bad slot (~0 when none), word 1 its value. The Status returned
// covers the launch only (a failed CUDA call naming it and file:line, or Unimplemented for
// top_k > kCombineMaxTopK); once the stream has passed the call, CombineDataError (given the
// words copied to the host) or FinishCombine (which synchronizes `stream`) gives the data
// error with the CPU backend's message: InvalidArgument
// "combine: slot_to_row[<s>]=<v> is outside the expert_out rows [0, tokens * top_k=<n>)".
absl::Status LaunchCombine(const CombineArgs& args, uint64_t* error, cudaStream_t stream);
absl::Status CombineDataError(const CombineArgs& args, const uint64_t host_error[2]);
absl::Status FinishCombine(const CombineArgs& args, const uint64_t* error, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_COMBINE_H_
