#include "engine/runtime/kv_block_manager.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

constexpr int64_t kMaxSlots = std::numeric_limits<int32_t>::max();

absl::Status UnknownSequence(int64_t seq_id) {
  return absl::NotFoundError(absl::StrCat("kv_cache: unknown sequence ", seq_id));
}

}  // namespace

absl::StatusOr<KvBlockManager> KvBlockManager::Create(int64_t num_blocks, int64_t block_size,
                                                      int64_t max_blocks_per_seq,
                                                      KvPartitions partitions) {
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: num_blocks=", num_blocks, " must be >= 1"));
  }
  if (block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: block_size=", block_size, " must be >= 1"));
  }
  if (max_blocks_per_seq < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: max_blocks_per_seq=", max_blocks_per_seq, " must be >= 1"));
  }
  // Divide instead of multiplying so that the check itself cannot overflow.
  if (num_blocks > kMaxSlots / block_size) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache: num_blocks=", num_blocks,
                                                   " * block_size=", block_size, " exceeds ",
                                                   kMaxSlots, " slots (slot ids are int32)"));
  }
  if (partitions.count < 1 || num_blocks % partitions.count != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: partitions=", partitions.count,
                     " must be >= 1 and divide num_blocks=", num_blocks));
  }
  if (partitions.count > 1 && !partitions.of) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: partitions=", partitions.count, " without a partition function"));
  }
  return KvBlockManager(num_blocks, block_size, max_blocks_per_seq, std::move(partitions));
}

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size, int64_t max_blocks_per_seq,
                               KvPartitions partitions)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      max_blocks_per_seq_(max_blocks_per_seq),
      partitions_(std::move(partitions)) {
  const int64_t per = blocks_per_partition();
  for (int p = 0; p < partitions_.count; ++p) {
    std::vector<int32_t> ids(static_cast<size_t>(per));
    for (int64_t i = 0; i < per; ++i) ids[i] = static_cast<int32_t>(p * per + i);
    // Ascending order is already a valid min-heap.
    free_.emplace_back(std::greater<int32_t>(), std::move(ids));
  }
}

int KvBlockManager::PartitionOf(int64_t seq_id) const {
  return partitions_.count == 1 ? 0 : partitions_.of(seq_id);
}

int64_t KvBlockManager::blocks_free() const {
  int64_t n = 0;
  for (const auto& heap : free_) n += static_cast<int64_t>(heap.size());
  return n;
}

int64_t KvBlockManager::max_blocks_for_one_seq() const {
  return std::min(blocks_per_partition(), max_blocks_per_seq_);
}

int64_t KvBlockManager::BlocksForTokens(int64_t total_tokens) const {
  if (total_tokens <= 0) return 0;
  // No overflow: total_tokens - 1 + block_size with block_size <= INT32_MAX.
  return (total_tokens - 1) / block_size_ + 1;
}

bool KvBlockManager::CanEverFit(int64_t total_tokens) const {
  return BlocksForTokens(total_tokens) <= max_blocks_for_one_seq();
}

absl::Status KvBlockManager::AddSequence(int64_t seq_id) {
  if (!seqs_.emplace(seq_id, Sequence()).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("kv_cache: sequence ", seq_id, " is already tracked"));
  }
  return absl::OkStatus();
}

absl::Status KvBlockManager::Reserve(int64_t seq_id, int64_t new_total_tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  if (new_total_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_cache: sequence ", seq_id, ": new_total_tokens=", new_total_tokens, " must be >= 0"));
  }
  const int64_t needed = BlocksForTokens(new_total_tokens);
  if (needed > max_blocks_for_one_seq()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_cache: sequence ", seq_id, " can never fit: ", new_total_tokens, " tokens need ",
        needed, " blocks of block_size=", block_size_, ", limit is ", max_blocks_for_one_seq(),
        " blocks (num_blocks=", num_blocks_, ", max_blocks_per_seq=", max_blocks_per_seq_, ")"));
  }
  Sequence& seq = it->second;
  if (new_total_tokens <= seq.tokens) return absl::OkStatus();
  const int64_t missing = needed - static_cast<int64_t>(seq.blocks.size());
  const int partition = PartitionOf(seq_id);
  if (partition < 0 || partition >= partitions_.count) {
    return absl::InternalError(absl::StrCat("kv_cache: sequence ", seq_id, " maps to partition ",
                                            partition, " of ", partitions_.count));
  }
  auto& free = free_[partition];
  if (missing > static_cast<int64_t>(free.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("kv_cache: sequence ", seq_id, " needs ", missing, " more blocks for ",
                     new_total_tokens, " tokens, ", free.size(), " free now",
                     partitions_.count > 1 ? absl::StrCat(" in its partition ", partition) : ""));
  }
  for (int64_t i = 0; i < missing; ++i) {
    seq.blocks.push_back(free.top());
    free.pop();
  }
  seq.tokens = new_total_tokens;
  return absl::OkStatus();
}

absl::Status KvBlockManager::Free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  const int64_t per = blocks_per_partition();
  for (int32_t block : it->second.blocks) free_[block / per].push(block);
  seqs_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int32_t> KvBlockManager::SlotFor(int64_t seq_id, int64_t position) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  const Sequence& seq = it->second;
  if (position < 0 || position >= seq.tokens) {
    return absl::OutOfRangeError(absl::StrCat("kv_cache: sequence ", seq_id,
                                              ": position=", position, " outside the ", seq.tokens,
                                              " reserved tokens"));
  }
  return static_cast<int32_t>(seq.blocks[position / block_size_] * block_size_ +
                              position % block_size_);
}

absl::Status KvBlockManager::FillSlotMapping(int64_t seq_id, int64_t start_pos, int64_t count,
                                             int32_t* out) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  const Sequence& seq = it->second;
  if (count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: sequence ", seq_id, ": count=", count, " must be >= 0"));
  }
  if (count > 0 && out == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: sequence ", seq_id, ": out is null with count=", count));
  }
  if (start_pos < 0 || start_pos > seq.tokens || count > seq.tokens - start_pos) {
    return absl::OutOfRangeError(absl::StrCat("kv_cache: sequence ", seq_id, ": positions [",
                                              start_pos, ", ", start_pos, " + ", count,
                                              ") outside the ", seq.tokens, " reserved tokens"));
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = start_pos + i;
    out[i] = static_cast<int32_t>(seq.blocks[p / block_size_] * block_size_ + p % block_size_);
  }
  return absl::OkStatus();
}

absl::Status KvBlockManager::FillBlockTableRow(int64_t seq_id, int32_t* row,
                                               int64_t max_blocks) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  const std::vector<int32_t>& blocks = it->second.blocks;
  if (row == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache: sequence ", seq_id, ": row is null"));
  }
  if (max_blocks < static_cast<int64_t>(blocks.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache: sequence ", seq_id, " holds ", blocks.size(),
                     " blocks, max_blocks=", max_blocks, " is too small"));
  }
  std::copy(blocks.begin(), blocks.end(), row);
  std::fill(row + blocks.size(), row + max_blocks, -1);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KvBlockManager::ReservedTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  return it->second.tokens;
}

absl::StatusOr<std::vector<int32_t>> KvBlockManager::BlocksOf(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  return it->second.blocks;
}

}  // namespace moe
