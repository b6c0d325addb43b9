// Row gathers and scatters on a CUDA device: Embedding, GatherRows, KvWrite. Copies are exact
// (NaN bits included); GatherRows' slot_scale path is bit for bit the CPU backend's
// (kernels/cpu/gather_rows.cc) for every non-NaN input (a NaN stays a NaN, its sign and payload
// may differ).
//
// Common to every launcher here:
// - args are validated by Backend (kernels/backend.cc); pointers are device memory of the
//   current device. Enqueued on `stream` (asynchronous); allocates nothing; deterministic;
//   16-byte vector copies where pointers and leading dims allow.
// - The indices (ids, index, slot_mapping) are checked on the device before anything is
//   written, in two kernels: the first finds the first bad entry, the second writes only when
//   there is none; so a bad index leaves every output untouched, as on the CPU.
// - `error` is device memory of 2 uint64 words, overwritten: word 0 gets the first bad entry's
//   position (~0 when none), word 1 its value. The Status a launcher returns covers the launch
//   only (a failed CUDA call, naming it and file:line); once the stream has passed the call,
//   <Op>DataError (given the words copied to the host) or Finish<Op> (which synchronizes
//   `stream`) gives the data error with the CPU backend's message.
#ifndef MOE_KERNELS_CUDA_ROWS_H_
#define MOE_KERNELS_CUDA_ROWS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// out[t, :] = table[ids[t], :]. Data error: InvalidArgument
// "embedding: ids[<t>]=<id> is outside [0, vocab=<vocab>)".
absl::Status LaunchEmbedding(const EmbeddingArgs& args, uint64_t* error, cudaStream_t stream);
absl::Status EmbeddingDataError(const EmbeddingArgs& args, const uint64_t host_error[2]);
absl::Status FinishEmbedding(const EmbeddingArgs& args, const uint64_t* error, cudaStream_t stream);

// dst[r, :] = src[index[r] / index_divisor, :], times slot_scale[index[r]] in fp32 with one
// rounding when slot_scale is set (f32, bf16, f16). Data error: InvalidArgument
// "gather_rows: index[<r>]=<i> / index_divisor=<d> is outside the source rows [0, src_rows=<n>)".
absl::Status LaunchGatherRows(const GatherRowsArgs& args, uint64_t* error, cudaStream_t stream);
absl::Status GatherRowsDataError(const GatherRowsArgs& args, const uint64_t host_error[2]);
absl::Status FinishGatherRows(const GatherRowsArgs& args, const uint64_t* error,
                              cudaStream_t stream);

// k_cache[slot_mapping[t]] = k[t, :], v_cache likewise. A repeated slot keeps the row of the
// last token naming it: a token writes only if no later token names its slot (each block
// compares its tokens' slots with those of the later tokens, O(tokens^2 / tokens per block)
// cached reads of slot_mapping, no scratch). Data error: InvalidArgument
// "kv_write: slot_mapping[<t>]=<slot> is outside [0, num_blocks * block_size=<slots>)".
absl::Status LaunchKvWrite(const KvWriteArgs& args, uint64_t* error, cudaStream_t stream);
absl::Status KvWriteDataError(const KvWriteArgs& args, const uint64_t host_error[2]);
absl::Status FinishKvWrite(const KvWriteArgs& args, const uint64_t* error, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_ROWS_H_
