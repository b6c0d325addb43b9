// One expert-parallel step's plan: the step's whole ModelBatch (every rank's sequences) with the
// owner rank of each sequence row, as rank 0 broadcasts it, and each rank's part of it.
//
// Wire form (EncodeStepPlan): a header of kStepPlanHeaderWords int64 words
//   {tokens, num_seqs, max_blocks_per_seq, logit_rows, hidden_states, num_blocks, block_size}
// then int32 words: token_ids[T], positions[T], seq_ids[T], slot_mapping[T],
// block_tables[num_seqs * max_blocks_per_seq], logit_rows[R], owners[num_seqs].
//
// A rank's part (LocalStepBatch): its sequence rows in batch order, renumbered 0.., their tokens
// in batch order, and the logit rows of its tokens in the batch's logit_rows order. Every rank's
// cache has num_blocks blocks; the plan's block ids and slots are global over the ranks' pools
// (rank 0's KvBlockManager with KvPartitions of the owners: rank r's blocks are
// [r * num_blocks, (r + 1) * num_blocks)), and a rank's part holds them made local to its
// cache (an id or slot of another rank's pool in its rows is InvalidArgument).
//
// Thread-compatible free functions.
#ifndef MOE_ENGINE_RUNTIME_EP_STEP_PLAN_H_
#define MOE_ENGINE_RUNTIME_EP_STEP_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model/model.h"

namespace moe {

inline constexpr int kStepPlanHeaderWords = 7;

struct EncodedStepPlan {
  std::vector<int64_t> header;  // kStepPlanHeaderWords
  std::vector<int32_t> words;
};

// The plan of `batch` with owners[s] the rank of sequence row s, for a cache of
// (num_blocks, block_size). InvalidArgument naming the field for owners of the wrong length.
absl::StatusOr<EncodedStepPlan> EncodeStepPlan(const ModelBatch& batch,
                                               absl::Span<const int32_t> owners, int64_t num_blocks,
                                               int64_t block_size);

// The number of int32 words that follow `header`; InvalidArgument for a negative field.
absl::StatusOr<int64_t> StepPlanWords(absl::Span<const int64_t> header);

struct LocalStepBatch {
  ModelBatch batch;  // rank's tokens; logit_rows index its tokens
  // Per rank q: how many of the plan's logit rows are q's (in plan order within q).
  std::vector<int64_t> logit_rows_per_rank;
  // For each plan logit row i: its position in the rank-major concatenation of every rank's
  // logit rows (what the gather to rank 0 receives).
  std::vector<int32_t> gathered_row;
};

// Rank `rank` of `ranks`'s part of an encoded plan. InvalidArgument naming the field for a plan
// whose sizes disagree or an owner outside [0, ranks).
absl::StatusOr<LocalStepBatch> LocalPart(absl::Span<const int64_t> header,
                                         absl::Span<const int32_t> words, int rank, int ranks);

}  // namespace moe

#endif  // MOE_ENGINE_RUNTIME_EP_STEP_PLAN_H_
