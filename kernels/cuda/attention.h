// Paged causal GQA attention on a CUDA device (backend.h's AttentionArgs), bit for bit the CPU
// backend's results (kernels/cpu/attention.cc) for every input whose scores are not NaN: the
// contract's fp32 order for each (token, head), partitions and merge included, every operation
// correctly rounded (no fma contraction; the exp is the CPU's ExpF, step for step), one
// rounding to bf16 at the end.
//
// Args are validated by Backend (kernels/backend.cc); pointers are device memory of the
// current device; enqueued on `stream` (asynchronous); allocates nothing; deterministic (no
// float atomics; no dependence on the launch configuration or on the other tokens).
//
// Data errors are checked on the device before anything is written: a first kernel finds the
// first bad (token, field), the attention kernels compute only when there is none, so a bad
// seq id, position or block table entry leaves `out` untouched, as on the CPU.
//
// `error` is device memory of 2 uint64 words, overwritten. Word 0 is ~0 when all is well, else
// the first bad entry as t * (max_blocks_per_seq + 2) + c, with c = 0 for seq_ids[t], 1 for
// positions[t] and 2 + b for block_tables[seq_ids[t], b]; word 1 is that entry's value (the
// seq id or position, sign-extended), or (seq id << 32) | (uint32) entry for a block_tables
// entry. The Status LaunchAttention returns covers the launch only (a failed CUDA call, naming
// it and file:line); once the stream has passed the call, AttentionDataError (given the words
// copied to the host) or FinishAttention (which synchronizes `stream`) gives the data error
// with the CPU backend's message.
#ifndef MOE_KERNELS_CUDA_ATTENTION_H_
#define MOE_KERNELS_CUDA_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// Partition slots (thread blocks) per (token, head): enough for the partitions any query of
// `args` can see (max_blocks_per_seq * block_size positions, or a sliding window of them).
int64_t AttentionPartitionSlots(const AttentionArgs& args);

// Which blocks compute the partitions, the same bits either way: one per (token, query head,
// partition), or one per (token, kv head, partition) for up to 8 of its query heads, reading
// each K / V row once for all of them (kAuto: the latter when heads / kv_heads > 1 and there
// are enough such blocks to fill the GPU).
enum class AttentionKernel { kAuto, kPerHead, kPerKvHead };

// `partials` is device scratch of `partial_floats` floats, needed when
// AttentionPartitionSlots(args) > 1 (null allowed otherwise): at least slots * (head_dim + 2),
// else InvalidArgument naming both. The (token, head) pairs go in as many launches as the
// partials need; the bits do not depend on partial_floats or `kernel`.
absl::Status LaunchAttention(const AttentionArgs& args, float* partials, int64_t partial_floats,
                             uint64_t* error, cudaStream_t stream,
                             AttentionKernel kernel = AttentionKernel::kAuto);

// OK when host_error[0] is ~0, else InvalidArgument with the CPU backend's message:
// "attention: seq_ids[<t>]=<s> is outside [0, num_seqs=<n>)",
// "attention: positions[<t>]=<p> is outside [0, max_blocks_per_seq * block_size=<n>)" or
// "attention: block_tables[<s>, <b>]=<block> is outside [0, num_blocks=<n>)".
absl::Status AttentionDataError(const AttentionArgs& args, const uint64_t host_error[2]);

// Waits for `stream`, then AttentionDataError of the words in `error`.
absl::Status FinishAttention(const AttentionArgs& args, const uint64_t* error, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_ATTENTION_H_
