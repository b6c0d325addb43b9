#include "engine/api/expert_parallel_setup.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moe {

EqualSplitMode ToEqualSplitMode(EngineExpertParallel::EqualSplit mode) {
  switch (mode) {
    case EngineExpertParallel::EqualSplit::kAlways:
      return EqualSplitMode::kAlways;
    case EngineExpertParallel::EqualSplit::kNever:
      return EqualSplitMode::kNever;
    case EngineExpertParallel::EqualSplit::kAuto:
      break;
  }
  return EqualSplitMode::kAuto;
}

absl::Status AgreeCreated(Communicator* comm, const absl::Status& local) {
  const int r = comm->rank(), p = comm->size();
  const int32_t failed = local.ok() ? 0 : 1;
  std::vector<int32_t> all(p, 0);
  const absl::Status gathered = comm->AllGatherHost(&failed, all.data(), sizeof(int32_t));
  if (!local.ok()) {
    return absl::Status(local.code(),
                        absl::StrCat("engine rank ", r, " of ", p, ": ", local.message()));
  }
  if (!gathered.ok()) {
    return absl::Status(gathered.code(),
                        absl::StrCat("engine: agreeing on Create: ", gathered.message()));
  }
  std::vector<int> bad;
  for (int q = 0; q < p; ++q) {
    if (all[q] != 0) bad.push_back(q);
  }
  if (bad.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("engine rank ", r, " of ", p, ": Create failed on rank(s) ",
                   absl::StrJoin(bad, ", "), " (their errors are in their output)"));
}

absl::Duration IdleInterval(const Communicator& comm) { return comm.timeout() / 4; }

}  // namespace moe
