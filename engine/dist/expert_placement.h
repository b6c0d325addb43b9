// Expert placement for expert parallelism: which rank holds which routed experts.
//
// E experts over P ranks in contiguous ranges: rank r owns [r * E / P, (r + 1) * E / P)
// (integer division). When P divides E every rank owns E / P experts; otherwise the ranges
// differ by at most one expert, the larger ones on the higher ranks (E=5, P=2: [0, 2), [2, 5)),
// and with P > E some ranks own none (they still route their tokens and take part in every
// collective). Ascending expert ids are ascending ranks, so a token's rows in expert order are
// also grouped by owner.
#ifndef MOE_ENGINE_DIST_EXPERT_PLACEMENT_H_
#define MOE_ENGINE_DIST_EXPERT_PLACEMENT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/layers/moe/moe_weights.h"

namespace moe {

struct ExpertOwner {
  int rank = 0;
  int64_t local_index = 0;  // position within the owner's range
};

class ExpertPlacement {
 public:
  // InvalidArgument unless num_experts >= 1 and ranks >= 1.
  static absl::StatusOr<ExpertPlacement> Create(int64_t num_experts, int ranks);

  int64_t num_experts() const { return num_experts_; }
  int ranks() const { return ranks_; }

  // Rank r's experts, r in [0, ranks).
  ExpertRange RangeOf(int rank) const;
  // The owner of expert e, e in [0, num_experts).
  ExpertOwner OwnerOf(int64_t expert) const;

 private:
  ExpertPlacement(int64_t num_experts, int ranks) : num_experts_(num_experts), ranks_(ranks) {}

  int64_t num_experts_;
  int ranks_;
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_EXPERT_PLACEMENT_H_
