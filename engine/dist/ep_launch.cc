#include "engine/dist/ep_launch.h"

#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#ifdef MOE_WITH_NCCL
#include "engine/dist/nccl_communicator.h"
#endif

namespace moe {

ExpertParallelLaunch::~ExpertParallelLaunch() {
  // The communicators go before MPI_Finalize (mpi_ is destroyed last, as declared first).
  device_group_.reset();
  world_.reset();
}

bool ExpertParallelLaunch::UnderMpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

absl::StatusOr<std::unique_ptr<ExpertParallelLaunch>> ExpertParallelLaunch::Start(
    int* argc, char*** argv, const std::string& backend, absl::Duration timeout) {
  if (!UnderMpirun()) {
    return absl::FailedPreconditionError(
        "expert parallelism needs mpirun (one process per rank, e.g. mpirun -np 2 ...); "
        "OMPI_COMM_WORLD_SIZE is not set");
  }
  auto launch = std::unique_ptr<ExpertParallelLaunch>(new ExpertParallelLaunch());
  MOE_ASSIGN_OR_RETURN(launch->mpi_, MpiRuntime::Init(argc, argv));
  CommunicatorOptions options;
  options.timeout = timeout;
  MOE_ASSIGN_OR_RETURN(launch->world_, MpiCommunicator::CreateWorld(options));
  if (backend != "cuda") return launch;
#ifdef MOE_WITH_NCCL
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  int device = 0;
  if (local == nullptr || !absl::SimpleAtoi(local, &device) || device < 0) {
    return absl::FailedPreconditionError(
        "backend cuda, expert parallel: OMPI_COMM_WORLD_LOCAL_RANK (this rank's GPU) is not "
        "set by mpirun");
  }
  MOE_ASSIGN_OR_RETURN(launch->device_group_,
                       NcclCommunicator::Create(launch->world_.get(), device, options));
  return launch;
#else
  return absl::FailedPreconditionError(
      "backend cuda, expert parallel: this binary was built without NCCL (no CUDA toolkit at "
      "build time)");
#endif
}

}  // namespace moe
