#include "engine/dist/expert_placement.h"

#include "absl/strings/str_cat.h"

namespace moe {

absl::StatusOr<ExpertPlacement> ExpertPlacement::Create(int64_t num_experts, int ranks) {
  if (num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: num_experts=", num_experts, " must be at least 1"));
  }
  if (ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: ranks=", ranks, " must be at least 1"));
  }
  return ExpertPlacement(num_experts, ranks);
}

ExpertRange ExpertPlacement::RangeOf(int rank) const {
  const int64_t first = rank * num_experts_ / ranks_;
  const int64_t end = (rank + 1) * num_experts_ / ranks_;
  return ExpertRange{first, end - first};
}

ExpertOwner ExpertPlacement::OwnerOf(int64_t expert) const {
  // The largest r with r * E / P <= expert: start from the estimate and correct by one.
  int rank = static_cast<int>((expert * ranks_ + ranks_ - 1) / num_experts_);
  if (rank >= ranks_) rank = ranks_ - 1;
  while (rank > 0 && RangeOf(rank).first > expert) --rank;
  while (rank + 1 < ranks_ && RangeOf(rank + 1).first <= expert) ++rank;
  return ExpertOwner{rank, expert - RangeOf(rank).first};
}

}  // namespace moe
