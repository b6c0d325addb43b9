// Paged GQA attention on the CPU: validation of the data, the split of the batch into groups
// of query rows that read the same cache rows (attention_group.h), and the threads.
//
// A group is the heads / kv_heads query heads of one kv head for a run of consecutive tokens of
// one sequence at consecutive positions (a prefill chunk), capped at kGroupRows rows; a decode
// token is a group of one token. The work items are (group, kv head) pairs, each computed on
// its own by one thread with every (token, head) getting exactly the operations of backend.h's
// order, so neither the thread count nor the other tokens of the batch change a bit. Seq ids,
// positions and the block table entries that will be read are checked before anything is
// written.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention_group.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::AttentionFirstVisible;

// Query rows per group: the group's tokens are capped at kGroupRows / (heads / kv_heads) (at
// least one), enough to amortise reading and converting each K / V row over many rows.
constexpr int64_t kGroupRows = 64;

// Items run from the last group down: in a causal prefill the last groups see the most
// positions, and starting with them balances the dynamic schedule.
template <typename T>
void AttendAll(const AttentionArgs& a, const int64_t* group_starts, int64_t groups,
               int64_t max_rows, int64_t max_span, int threads) {
  const bool avx512 = cpu_kernels::AttentionUsesAvx512();
  const int64_t floats = cpu_kernels::AttentionScratchFloats(max_rows, max_span, a.head_dim);
  const int64_t ints = cpu_kernels::AttentionScratchInts(max_rows);
  const int64_t items = groups * a.kv_heads;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // A decode step's scratch (up to ~1000 positions of 8 rows) stays on the stack.
    cpu_kernels::Scratch<float, 16384> scratch_floats(floats);
    cpu_kernels::Scratch<int32_t, 256> scratch_ints(ints);
    const cpu_kernels::AttentionScratch w = cpu_kernels::CarveAttentionScratch(
        scratch_floats.data(), scratch_ints.data(), max_rows, max_span, a.head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < items; ++i) {
      const int64_t item = items - 1 - i;
      const int64_t g = item / a.kv_heads;
      cpu_kernels::AttendGroup<T>(a, group_starts[g], group_starts[g + 1] - group_starts[g],
                                  item % a.kv_heads, avx512, w);
    }
  }
}

}  // namespace

absl::Status CpuBackend::RunAttention(const AttentionArgs& args) {
  const int64_t max_positions = args.max_blocks_per_seq * args.block_size;
  int64_t visible = 0;
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int64_t s = args.seq_ids[t];
    if (s < 0 || s >= args.num_seqs) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention: seq_ids[", t, "]=", s, " is outside [0, num_seqs=", args.num_seqs, ")"));
    }
    const int64_t p = args.positions[t];
    if (p < 0 || p >= max_positions) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: positions[", t, "]=", p,
                       " is outside [0, max_blocks_per_seq * block_size=", max_positions, ")"));
    }
    const int64_t lo = AttentionFirstVisible(p, args.sliding_window);
    visible += p - lo + 1;
    for (int64_t b = lo / args.block_size; b <= p / args.block_size; ++b) {
      const int64_t block = args.block_tables[s * args.max_blocks_per_seq + b];
      if (block < 0 || block >= args.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("attention: block_tables[", s, ", ", b, "]=", block,
                         " is outside [0, num_blocks=", args.num_blocks, ")"));
      }
    }
  }
  // Groups: runs of consecutive tokens of one sequence at consecutive positions. Every
  // position between a group's first visible one and its last query was checked above, since
  // the tokens' ranges overlap or touch.
  const int64_t heads_per_kv = args.heads / args.kv_heads;
  const int64_t max_tokens = std::max<int64_t>(1, kGroupRows / heads_per_kv);
  cpu_kernels::Scratch<int64_t, 1024> starts(args.tokens + 1);
  int64_t groups = 0, max_rows = 0, max_span = 0;
  for (int64_t t = 0; t < args.tokens;) {
    int64_t end = t + 1;
    while (end < args.tokens && end - t < max_tokens && args.seq_ids[end] == args.seq_ids[t] &&
           args.positions[end] == args.positions[end - 1] + 1) {
      ++end;
    }
    starts[groups++] = t;
    max_rows = std::max(max_rows, (end - t) * heads_per_kv);
    max_span = std::max<int64_t>(
        max_span, args.positions[end - 1] -
                      AttentionFirstVisible(args.positions[t], args.sliding_window) + 1);
    t = end;
  }
  starts[groups] = args.tokens;
  // ~4 flops per visible position and dim (score and weighted sum).
  const int64_t work = visible * args.heads * args.head_dim * 4;
  const int threads = cpu_kernels::ThreadsFor(num_threads(), work);
  if (args.dtype == DType::kF32) {
    AttendAll<float>(args, starts.data(), groups, max_rows, max_span, threads);
  } else {
    AttendAll<uint16_t>(args, starts.data(), groups, max_rows, max_span, threads);
  }
  return absl::OkStatus();
}

}  // namespace moe
