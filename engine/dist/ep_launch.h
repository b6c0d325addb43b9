// The expert-parallel group of a job launched by mpirun (one process per rank): MPI up, the world
// communicator over every process, and for GPU backends an NCCL communicator on this rank's GPU
// (OMPI_COMM_WORLD_LOCAL_RANK) whose unique id is broadcast over the world. The launchers
// (moe_generate, moe_server) then run the engine on rank 0 and serve its steps on the others.
#ifndef MOE_ENGINE_DIST_EP_LAUNCH_H_
#define MOE_ENGINE_DIST_EP_LAUNCH_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/dist/communicator.h"
#include "engine/dist/mpi_communicator.h"

namespace moe {

class ExpertParallelLaunch {
 public:
  // FailedPrecondition when not started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE unset: MPI_Init
  // would make a one-process job), or for backend "cuda" without NCCL in this build or without
  // OMPI_COMM_WORLD_LOCAL_RANK; MPI's and NCCL's errors otherwise. `timeout` bounds every
  // collective (CommunicatorOptions). Collective: every process calls it.
  static absl::StatusOr<std::unique_ptr<ExpertParallelLaunch>> Start(int* argc, char*** argv,
                                                                     const std::string& backend,
                                                                     absl::Duration timeout);
  ~ExpertParallelLaunch();

  // Whether this process was started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE is set), which
  // Start needs: a launcher can refuse earlier with its own message.
  static bool UnderMpirun();

  int rank() const { return mpi_->world_rank(); }
  // The communicator for EngineOptions::expert_parallel: NCCL on GPUs, else the MPI world.
  Communicator* group() const {
    return device_group_ != nullptr ? device_group_.get() : world_.get();
  }
  // Ends every process of the job (MPI_Abort): for a rank that fails while its peers may wait
  // in a collective.
  [[noreturn]] void Abort(int code) { mpi_->Abort(code); }

 private:
  ExpertParallelLaunch() = default;
  std::unique_ptr<MpiRuntime> mpi_;
  std::unique_ptr<MpiCommunicator> world_;
  std::unique_ptr<Communicator> device_group_;  // before MPI goes away
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_EP_LAUNCH_H_
