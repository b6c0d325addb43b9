// NcclCommunicator: the Communicator over NCCL for CUDA device buffers, one rank per GPU.
// Built wherever the CUDA toolkit (with nccl.h and libnccl) is; it needs GPUs to run, so the
// CPU-only CI machine compiles it and runs nothing of it (its test skips without a device).
//
// NCCL blocks the host only while it connects ranks: in initialisation and in the first use of
// each connection, which it makes lazily. Create / CreateAll do both (the initialisation and one
// round of every operation this class issues) on a helper thread, against the deadline (at
// least 60 s); after that no NCCL call blocks the host. (NCCL's nonblocking communicators,
// which would bound every call without this, were measured to add 75-110 us to each collective
// on 2 H200s.) A Create past its deadline leaves that thread blocked in NCCL and the
// communicator leaked: its error should end the job.
// Each call orders itself after all work already queued on the rank's device
// (cudaDeviceSynchronize: the buffers usually come from the backend's own stream), runs the NCCL
// collective on the communicator's stream, and returns once it has completed, polling
// cudaStreamQuery and ncclCommGetAsyncError against the deadline; past it the NCCL communicator
// is aborted (ncclCommAbort, which also frees a rank stuck in the collective) and the call
// returns DeadlineExceeded naming the op, the rank and the limit (communicator.h). The
// all-to-alls are grouped ncclSend / ncclRecv; host arrays (AllReduce, AllGatherHost,
// BroadcastHost) go through a device staging buffer.
#ifndef MOE_ENGINE_DIST_NCCL_COMMUNICATOR_H_
#define MOE_ENGINE_DIST_NCCL_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"

namespace moe {

class NcclCommunicator : public Communicator {
 public:
  // One process per GPU (launched by mpirun): collective over `bootstrap`'s ranks (an
  // MpiCommunicator), whose rank 0 makes the NCCL unique id and broadcasts it; this rank uses
  // CUDA device `device`. The NCCL rank and size are bootstrap's.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(
      Communicator* bootstrap, int device, const CommunicatorOptions& options = {});
  // One process driving all of `devices` (one group of ncclCommInitRankConfig, as
  // ncclCommInitAll does): rank i on devices[i], each used by
  // its own thread.
  static absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> CreateAll(
      const std::vector<int>& devices, const CommunicatorOptions& options = {});
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::Cuda(device_); }
  absl::Duration timeout() const override { return timeout_; }

  absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                         absl::Span<const int64_t> send_displs, void* recv,
                         absl::Span<const int64_t> recv_counts,
                         absl::Span<const int64_t> recv_displs) override;
  absl::Status AllToAll(const void* send, void* recv, int64_t bytes_per_peer) override;
  absl::Status AllGather(const void* send, void* recv, int64_t bytes) override;
  absl::Status Broadcast(void* buffer, int64_t bytes, int root) override;
  absl::Status Barrier() override;
  // Through a device staging buffer that grows to the largest call and is kept.
  absl::Status AllGatherHost(const void* send, void* recv, int64_t bytes) override;
  absl::Status BroadcastHost(void* buffer, int64_t bytes, int root) override;

 private:
  struct State;  // the NCCL and CUDA handles (their headers stay out of this header)

  NcclCommunicator();
  // Makes the stream and the scratch buffer on device_ once the NCCL communicator exists.
  absl::Status Finish();
  // One round of every kind of NCCL operation this class issues, over `comms` (this process's
  // ranks of one group), so every connection NCCL makes lazily exists before the first real
  // collective.
  static absl::Status WarmUp(const std::vector<NcclCommunicator*>& comms);
  // Before an op: usable, on the right device, after the device's queued work.
  absl::Status Start(absl::string_view op);
  // After an op was enqueued with result `enqueued`: waits for it against the deadline.
  absl::Status Complete(absl::string_view op, int enqueued);
  absl::Status Fail(absl::Status status);
  // Makes the host staging buffer at least `bytes` long.
  absl::Status ReserveStaging(int64_t bytes);
  // The all-to-alls: grouped ncclSend / ncclRecv of bytes.
  absl::Status SendRecv(absl::string_view op, const void* send,
                        absl::Span<const int64_t> send_counts,
                        absl::Span<const int64_t> send_displs, void* recv,
                        absl::Span<const int64_t> recv_counts,
                        absl::Span<const int64_t> recv_displs);

  std::unique_ptr<State> state_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  absl::Duration timeout_;
  std::string broken_;  // the first failure, once there was one
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_NCCL_COMMUNICATOR_H_
