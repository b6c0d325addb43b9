// An in-process communicator group: `size` ranks in one process, one thread per rank, buffers
// in host memory. It backs the unit tests (deterministic, no launcher) and the mode where one
// process drives all local devices from one thread each.
//
// Each collective meets twice: every rank posts its arguments and waits for the others; then
// each rank copies what it receives straight out of its peers' send buffers, and waits until
// every rank has copied, so no buffer is reused early. A rank that waits past the group's
// timeout gets DeadlineExceeded naming the op and the limit; after that, and after ranks were
// found calling different collectives or passing counts that disagree (Internal /
// InvalidArgument, the same on every rank), the group is broken and every later call returns
// FailedPrecondition.
#ifndef MOE_ENGINE_DIST_LOCAL_COMMUNICATOR_H_
#define MOE_ENGINE_DIST_LOCAL_COMMUNICATOR_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"

namespace moe {

class LocalBoard;

class LocalCommunicatorGroup {
 public:
  // InvalidArgument unless size >= 1 and the timeout is positive.
  static absl::StatusOr<std::unique_ptr<LocalCommunicatorGroup>> Create(
      int size, const CommunicatorOptions& options = {});
  ~LocalCommunicatorGroup();

  int size() const { return static_cast<int>(ranks_.size()); }
  // Rank r's communicator, owned by the group; each is used by one thread at a time.
  Communicator* rank(int r) { return ranks_[r].get(); }

 private:
  LocalCommunicatorGroup() = default;

  std::unique_ptr<LocalBoard> board_;
  std::vector<std::unique_ptr<Communicator>> ranks_;
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_LOCAL_COMMUNICATOR_H_
