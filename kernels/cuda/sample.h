// Sample on a CUDA device: the logits processors and the draw of SampleArgs (kernels/backend.h),
// steps 1-7, in fp64, following kernels/cpu/sample.cc operation for operation: the same fp64
// values, the same comparisons, and every fp64 sum in the CPU's order: backend.h's chunked
// sums over ids with a thread per chunk of kSampleChunk ids, then one thread over the chunk
// sums; top-p's walk in descending z and the draw's walk inside its chunk on one thread, over
// values staged through shared memory. Division, subtraction and the
// sums are correctly rounded on both sides (no fma contraction: -fmad=false).
//
// Exactness: the CPU calls libm's exp / log on doubles, this kernel CUDA's (both within 1 ulp,
// not always correctly rounded), so a probability may differ from the CPU's in its last bit.
// The ids are the CPU's except where such a last-bit difference flips a comparison (the
// top-p / min-p cut or the draw landing exactly at a cumulative boundary: measure-zero in
// practice); greedy ids, top-k and the kept sets before exp are exact. logprobs and
// raw_logprobs are fp32 roundings of fp64 values a few ulp (fp64) from the CPU's, so they are
// equal bits except when the fp64 value sits at an fp32 rounding boundary: within 1 fp32 ulp.
//
// Memory contract:
// - logits, ids, logprobs, raw_logprobs and workspace are device memory of the current device;
//   params, seen_offsets and seen_ids are host memory (as backend.h states). The launcher
//   copies params, seen_offsets and the seen ids (in chunks of kSampleSeenChunk ids) into the
//   workspace with stream-ordered cudaMemcpyAsync from pageable memory (which returns once the
//   host data has been staged, so the caller may reuse its arrays when the call returns).
// - The workspace needs SampleWorkspaceBytes(rows, vocab) bytes (any alignment): 32 bytes per
//   logit (fp64 z, a double-buffered 64-bit sort key and int32 id), a few words per row, and
//   2 MiB for the seen-id chunk and the segmented radix sort's temporary storage.
// - args are validated by Backend (kernels/backend.cc): params, seen offsets and seen ids on the
//   host. The logits are checked on the device: the launcher resets the 2 error words at
//   `error` and enqueues the check; nothing is written to ids / logprobs / raw_logprobs when it
//   fails. Once the stream has passed the call, SampleDataError (given the words copied to the
//   host) or FinishSample (which synchronizes `stream`) returns the CPU backend's message for
//   the first bad row: "sample: logits[r, v]=<x> is NaN or +inf" or "sample: logits row r is
//   all -inf (vocab=V)". Word 0 is r * (vocab + 1) + v (v = vocab for an all -inf row), word 1
//   the fp32 bits of the bad logit.
// - Enqueued on `stream`; allocates nothing; deterministic; one block per row, so a row's
//   result depends on neither the batch nor the launch shape. rows == 0 enqueues nothing.
//   Returns the Status of a failed CUDA call naming it and file:line.
#ifndef MOE_KERNELS_CUDA_SAMPLE_H_
#define MOE_KERNELS_CUDA_SAMPLE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// Seen ids copied to the device per chunk.
constexpr int64_t kSampleSeenChunk = int64_t{1} << 18;

// Workspace bytes LaunchSample needs (0 when rows or vocab is <= 0).
size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab);

absl::Status LaunchSample(const SampleArgs& args, uint64_t* error, cudaStream_t stream);

absl::Status SampleDataError(const SampleArgs& args, const uint64_t host_error[2]);

// Waits for `stream`, reads the 2 error words at `error` (device) and returns SampleDataError.
absl::Status FinishSample(const SampleArgs& args, const uint64_t* error, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_SAMPLE_H_
