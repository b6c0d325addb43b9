// Host-side bookkeeping of the paged KV cache: which cache blocks each sequence owns. It
// holds no device memory; it produces the slot_mapping and block_tables rows that
// kernels/backend.h's KvWriteArgs and AttentionArgs read.
//
// Cache layout (backend.h): k_cache / v_cache are [num_blocks, block_size, kv_heads,
// head_dim]; position p of a sequence lives in slot
//   block_tables[s, p / block_size] * block_size + p % block_size.
//
// Memory policy (issue 3): a sequence whose total tokens can never fit (more blocks than
// min(num_blocks, max_blocks_per_seq)) is rejected with InvalidArgument; one that cannot fit
// now gets ResourceExhausted and nothing changes, so the caller can wait and retry after other
// sequences are freed. Free returns all of a sequence's blocks at once.
//
// Determinism: blocks are always taken lowest free block id first, so the same sequence of
// calls gives the same slots on every run.
//
// Partitions (expert parallelism: every rank's cache holds only its own sequences' blocks):
// the blocks are `count` equal pools, pool p holding ids [p * N, (p + 1) * N) with
// N = num_blocks / count, and a sequence takes its blocks from pool `of(seq_id)` only. Ids and
// slots stay global; the rank owning pool p subtracts p * N (ep_step_plan.h).
//
// Thread-compatibility: not thread-safe. The scheduler owns one instance and calls it from
// one thread (or serialises calls itself); const methods may run concurrently with each other.
#ifndef MOE_ENGINE_RUNTIME_KV_BLOCK_MANAGER_H_
#define MOE_ENGINE_RUNTIME_KV_BLOCK_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <queue>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

struct KvPartitions {
  int count = 1;  // pools; divides num_blocks
  // The pool of a sequence, in [0, count); may be null when count is 1.
  std::function<int(int64_t seq_id)> of;
};

class KvBlockManager {
 public:
  // Validates the geometry. InvalidArgument naming the field when num_blocks,
  // block_size or max_blocks_per_seq is < 1, or when num_blocks * block_size (the number of
  // slots) does not fit in int32 (slot_mapping and block_tables are int32).
  // With partitions: InvalidArgument also when count < 1, count does not divide num_blocks, or
  // count > 1 without `of`.
  static absl::StatusOr<KvBlockManager> Create(int64_t num_blocks, int64_t block_size,
                                               int64_t max_blocks_per_seq,
                                               KvPartitions partitions = {});

  KvBlockManager(KvBlockManager&&) = default;
  KvBlockManager& operator=(KvBlockManager&&) = default;
  KvBlockManager(const KvBlockManager&) = delete;
  KvBlockManager& operator=(const KvBlockManager&) = delete;

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  int64_t blocks_per_partition() const { return num_blocks_ / partitions_.count; }
  // The most blocks one sequence can ever hold: min(blocks_per_partition, max_blocks_per_seq).
  int64_t max_blocks_for_one_seq() const;

  // Blocks that hold total_tokens tokens: ceil(total_tokens / block_size); 0 for <= 0.
  int64_t BlocksForTokens(int64_t total_tokens) const;
  // False when a sequence of total_tokens tokens could not fit even with the whole cache free.
  bool CanEverFit(int64_t total_tokens) const;

  // Starts tracking seq_id with no tokens and no blocks. AlreadyExists if tracked.
  absl::Status AddSequence(int64_t seq_id);

  // Grows seq_id so that it can hold new_total_tokens tokens (positions 0 ..
  // new_total_tokens - 1), taking the missing blocks lowest id first. A request at or below the
  // tokens already reserved is OK and changes nothing (sequences never shrink; Free them).
  // Returns, checked in this order:
  //   NotFound          seq_id is not tracked;
  //   InvalidArgument   new_total_tokens < 0, or it can never fit (message names the tokens,
  //                     block_size and the block limit); nothing changed;
  //   ResourceExhausted not enough free blocks now (in seq_id's partition); nothing changed,
  //                     retry after a Free.
  absl::Status Reserve(int64_t seq_id, int64_t new_total_tokens);

  // Returns all of seq_id's blocks to the free pool and forgets it. NotFound if not tracked.
  absl::Status Free(int64_t seq_id);

  // Slot of position `position` of seq_id. NotFound for an unknown id; OutOfRange unless
  // 0 <= position < the tokens reserved.
  absl::StatusOr<int32_t> SlotFor(int64_t seq_id, int64_t position) const;

  // out[i] = SlotFor(seq_id, start_pos + i) for i in [0, count): the KvWriteArgs
  // slot_mapping of a chunk of one sequence. `out` has room for count entries. NotFound for an
  // unknown id; InvalidArgument for count < 0 or a null out with count > 0; OutOfRange unless
  // 0 <= start_pos and start_pos + count <= the tokens reserved. Writes nothing on error.
  absl::Status FillSlotMapping(int64_t seq_id, int64_t start_pos, int64_t count,
                               int32_t* out) const;

  // Writes seq_id's block ids in order into row[0 .. max_blocks) and -1 in the unused
  // entries: one row of AttentionArgs block_tables. NotFound for an unknown id;
  // InvalidArgument for a null row or when max_blocks is smaller than the blocks held.
  absl::Status FillBlockTableRow(int64_t seq_id, int32_t* row, int64_t max_blocks) const;

  bool Contains(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  // Tokens reserved for seq_id; NotFound if not tracked.
  absl::StatusOr<int64_t> ReservedTokens(int64_t seq_id) const;
  // Blocks held by seq_id, in position order; NotFound if not tracked.
  absl::StatusOr<std::vector<int32_t>> BlocksOf(int64_t seq_id) const;

  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  int64_t blocks_used() const { return num_blocks_ - blocks_free(); }
  int64_t blocks_free() const;

 private:
  struct Sequence {
    int64_t tokens = 0;
    std::vector<int32_t> blocks;
  };

  KvBlockManager(int64_t num_blocks, int64_t block_size, int64_t max_blocks_per_seq,
                 KvPartitions partitions);
  int PartitionOf(int64_t seq_id) const;

  int64_t num_blocks_;
  int64_t block_size_;
  int64_t max_blocks_per_seq_;
  KvPartitions partitions_;
  // Per partition, a min-heap of its free block ids: the lowest id is taken first.
  std::vector<std::priority_queue<int32_t, std::vector<int32_t>, std::greater<int32_t>>> free_;
  // Ordered so that any iteration is reproducible.
  std::map<int64_t, Sequence> seqs_;
};

}  // namespace moe

#endif  // MOE_ENGINE_RUNTIME_KV_BLOCK_MANAGER_H_
