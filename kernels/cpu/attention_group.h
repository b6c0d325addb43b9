// One work item of the CPU attention kernel (private to kernels/cpu/attention*.cc): a group of
// query rows that read the same cache rows, the heads / kv_heads query heads of one kv head for
// one or more consecutive tokens of one sequence at consecutive positions (a prefill chunk; a
// decode token alone is a group of one token).
//
// A group is computed in three passes over the positions it sees, `span` of them from the
// first token's first visible position to the last token's position:
//   1. scores: the K rows, a chunk of kAttentionChunk positions at a time (converted to fp32,
//      or read in place), against every row of the group with the register tiles of
//      attention_tiles.h, into a [span, rows8] score matrix;
//   2. softmax: for each partition of kAttentionPartition absolute positions (backend.h), max,
//      exp and sum of every row over its own positions there, 8 or 16 rows per vector; then
//      each row's merge: m over its partitions, their weights w_i and the merged sum;
//   3. the weighted V sums, a chunk of V rows at a time for every row, into a per-partition
//      sum that is merged (acc += w_i * acc_i) where its partition ends (chunks end at
//      positions that are multiples of kAttentionChunk, so none crosses a partition); then
//      out = acc / sum.
// Every (token, head) gets exactly the fp32 operations of AttentionArgs' contract in its order,
// over its own positions only: the grouping changes which values share a register, never the
// operations that make a value, so neither the grouping nor the thread count changes a bit.
#ifndef MOE_KERNELS_CPU_ATTENTION_GROUP_H_
#define MOE_KERNELS_CPU_ATTENTION_GROUP_H_

#include <algorithm>
#include <cstdint>

#include "kernels/backend.h"

namespace moe {
namespace cpu_kernels {

// K or V rows converted at a time: 32 rows of head_dim 128 (16 KiB) stay in L1 while every row
// tile of the group reads them. Divides kAttentionPartition.
constexpr int64_t kAttentionChunk = 32;
static_assert(kAttentionPartition % kAttentionChunk == 0, "value chunks within partitions");

// Partitions a group of `span` positions can touch.
inline int64_t AttentionMaxPartitions(int64_t span) { return span / kAttentionPartition + 2; }

// The first position a query at p sees.
inline int64_t AttentionFirstVisible(int64_t p, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
}

// Per-thread scratch for groups of at most max_rows query rows seeing at most max_span
// positions. Rows are padded to hd8 = head_dim rounded up to 8 floats; rows8 = rows rounded
// up to 8.
struct AttentionScratch {
  float* q;     // [rows rounded up to even, hd8] query rows in the paired layout of
                // attention_tiles.h; padding dims -0.0f, a padding row 0
  float* acc;   // [rows, hd8] the weighted V sums
  float* s;     // [span, rows8] scores, then exp(score - m)
  float* kv;    // [kAttentionChunk, hd8] converted K or V rows
  float* sum;   // [rows8] the merged sums
  float* pm;    // [partitions, rows8] each partition's m_i, then its merge weight w_i
  float* psum;  // [partitions, rows8] each partition's sum_i
  float* pacc;  // [rows, hd8] the current partition's weighted V sums
  int32_t* lo;  // [rows8] each row's first and last position, relative to the group's first
  int32_t* hi;  // visible one; lo > hi for padding rows
};

// Floats and int32s an AttentionScratch needs, 64-byte alignment of each buffer included.
int64_t AttentionScratchFloats(int64_t max_rows, int64_t max_span, int64_t head_dim);
int64_t AttentionScratchInts(int64_t max_rows);
// Lays the buffers out in `floats` and `ints` (sized as above).
AttentionScratch CarveAttentionScratch(float* floats, int32_t* ints, int64_t max_rows,
                                       int64_t max_span, int64_t head_dim);

// Whether the AVX-512 tiles run: where the CPU has AVX-512F/DQ/VL, unless the environment sets
// MOE_ATTENTION_ISA=avx2 (read once; the tests use it to check the AVX2 tiles on such a CPU).
bool AttentionUsesAvx512();

// Attention of tokens [t0, t0 + tokens) (one sequence, consecutive positions) x the query heads
// of kv head kvh into their rows of a.out. T is float (f32) or uint16_t (bf16); the arguments
// are validated and every position the group sees has a valid block table entry.
template <typename T>
void AttendGroup(const AttentionArgs& a, int64_t t0, int64_t tokens, int64_t kvh, bool avx512,
                 const AttentionScratch& w);

}  // namespace cpu_kernels
}  // namespace moe

#endif  // MOE_KERNELS_CPU_ATTENTION_GROUP_H_
