// MpiCommunicator: the Communicator over Open MPI (host buffers), one process per rank, launched
// by mpirun. Collectives are MPI's non-blocking ones (MPI_Ialltoallv, MPI_Ialltoall,
// MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier) polled with MPI_Test until done or until the
// timeout, so a peer that hangs or never calls gives DeadlineExceeded (communicator.h) instead
// of a hang; a peer process that dies makes mpirun end the whole job. MPI errors become
// Internal naming the call and MPI's message.
//
// After a timeout the abandoned request may still read and write the buffers of that call (MPI
// cannot cancel a collective): they must stay alive while the process lives, and the job should
// end. MPI counts are ints: a per-peer count or displacement of 2^31 bytes or more is
// InvalidArgument.
#ifndef MOE_ENGINE_DIST_MPI_COMMUNICATOR_H_
#define MOE_ENGINE_DIST_MPI_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"

namespace moe {

// MPI for this process: MPI_Init_thread (MPI_THREAD_SERIALIZED: any thread may make MPI calls,
// one at a time, e.g. moe::Engine's worker after the main thread's Create) on Init,
// MPI_Finalize on destruction. At most one per process. FailedPrecondition when MPI is already
// initialised or provides less than MPI_THREAD_SERIALIZED.
class MpiRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Init(int* argc, char*** argv);
  ~MpiRuntime();

  // MPI_Abort over MPI_COMM_WORLD: ends every process of the job with exit status `code`
  // (mpirun's too). For a rank that fails while its peers may wait in a collective, where
  // MPI_Finalize would wait for them. Does not return.
  [[noreturn]] void Abort(int code);

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

 private:
  MpiRuntime() = default;
  int world_rank_ = 0;
  int world_size_ = 1;
};

class MpiCommunicator : public Communicator {
 public:
  // A communicator over all processes of the job (a duplicate of MPI_COMM_WORLD, with errors
  // returned, not fatal). MPI must be initialised (MpiRuntime). Collective: every process
  // calls it. InvalidArgument for a non-positive timeout, FailedPrecondition without MPI.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> CreateWorld(
      const CommunicatorOptions& options = {});
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::Cpu(); }
  absl::Duration timeout() const override { return timeout_; }

  absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                         absl::Span<const int64_t> send_displs, void* recv,
                         absl::Span<const int64_t> recv_counts,
                         absl::Span<const int64_t> recv_displs) override;
  absl::Status AllToAll(const void* send, void* recv, int64_t bytes_per_peer) override;
  absl::Status AllGather(const void* send, void* recv, int64_t bytes) override;
  absl::Status Broadcast(void* buffer, int64_t bytes, int root) override;
  absl::Status Barrier() override;

 private:
  struct State;  // the MPI handles (mpi.h stays out of this header)

  MpiCommunicator();

  // OK, or FailedPrecondition once an earlier call failed.
  absl::Status CheckUsable(absl::string_view op) const;
  // Converts an int64 list to MPI's ints; InvalidArgument past INT_MAX.
  absl::Status ToInts(absl::string_view op, absl::string_view name,
                      absl::Span<const int64_t> values, std::vector<int>* out) const;
  // Polls the request started by `start_rc`'s call until done or the timeout.
  absl::Status Complete(absl::string_view op, int start_rc);

  std::unique_ptr<State> state_;
  int rank_ = 0;
  int size_ = 1;
  absl::Duration timeout_;
  std::string broken_;  // the first failure, once there was one
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_MPI_COMMUNICATOR_H_
