#include "tests/testing/step_batch.h"

#include <algorithm>

#include "kernels/status_macros.h"

namespace moe::testing {

absl::StatusOr<ModelBatch> BuildStepBatch(KvBlockManager& blocks, const std::vector<int64_t>& seqs,
                                          const std::vector<std::vector<int32_t>>& chunks,
                                          bool all_rows, int64_t width) {
  std::vector<int64_t> starts;
  int64_t needed = 1;
  for (size_t s = 0; s < seqs.size(); ++s) {
    if (!blocks.Contains(seqs[s])) MOE_RETURN_IF_ERROR(blocks.AddSequence(seqs[s]));
    MOE_ASSIGN_OR_RETURN(int64_t start, blocks.ReservedTokens(seqs[s]));
    const int64_t end = start + static_cast<int64_t>(chunks[s].size());
    MOE_RETURN_IF_ERROR(blocks.Reserve(seqs[s], end));
    starts.push_back(start);
    needed = std::max(needed, blocks.BlocksForTokens(end));
  }
  if (width == 0) width = needed;
  ModelBatch b;
  b.num_seqs = static_cast<int64_t>(seqs.size());
  b.max_blocks_per_seq = width;
  b.block_tables.assign(b.num_seqs * width, -1);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t n = static_cast<int64_t>(chunks[s].size());
    std::vector<int32_t> slots(n);
    MOE_RETURN_IF_ERROR(blocks.FillSlotMapping(seqs[s], starts[s], n, slots.data()));
    MOE_RETURN_IF_ERROR(blocks.FillBlockTableRow(seqs[s], b.block_tables.data() + s * width, width));
    for (int64_t i = 0; i < n; ++i) {
      if (all_rows || i == n - 1) b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size()));
      b.token_ids.push_back(chunks[s][i]);
      b.positions.push_back(static_cast<int32_t>(starts[s] + i));
      b.seq_ids.push_back(static_cast<int32_t>(s));
      b.slot_mapping.push_back(slots[i]);
    }
  }
  return b;
}

}  // namespace moe::testing
