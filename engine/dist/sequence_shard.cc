#include "engine/dist/sequence_shard.h"

#include "absl/strings/str_cat.h"

namespace moe {

absl::StatusOr<SequenceShard> SequenceShard::Create(int64_t batch, int64_t length, int ranks,
                                                    int rank) {
  if (batch < 0 || length < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence_shard: batch=", batch, " length=", length, " must not be negative"));
  }
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence_shard: rank=", rank, " is outside [0, ranks=", ranks, ")"));
  }
  return SequenceShard(batch, length, rank * length / ranks, (rank + 1) * length / ranks);
}

}  // namespace moe
