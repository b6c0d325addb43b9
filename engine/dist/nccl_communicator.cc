#include "engine/dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

constexpr absl::string_view kImpl = "nccl";
constexpr int64_t kScratchBytes = 256;  // Barrier's word, the warm-up's bytes

// Initialisation waits at least this long, whatever the collectives' timeout: it sets up the
// transports between every pair of ranks (measured over 500 ms for 2 H200s in one process).
constexpr absl::Duration kMinInitTimeout = absl::Seconds(60);

// NCCL calls that may return before their work is done (ncclInProgress) count as accepted.
bool Accepted(ncclResult_t r) { return r == ncclSuccess || r == ncclInProgress; }

absl::Status NcclError(absl::string_view what, ncclResult_t r) {
  return absl::InternalError(absl::StrCat("nccl: ", what, " failed: ", ncclGetErrorString(r)));
}

// Runs `body` on a thread of its own and waits for it up to `timeout`. Past it,
// DeadlineExceeded naming `what`; the thread stays blocked inside NCCL (it cannot be
// cancelled), and whatever `body` uses must stay alive: the caller leaks it, and its error
// should end the job.
absl::Status WithDeadline(absl::Duration timeout, absl::string_view what,
                          std::function<absl::Status()> body) {
  struct Shared {
    absl::Notification done;
    absl::Status status;
  };
  auto shared = std::make_shared<Shared>();
  std::thread([shared, body = std::move(body)] {
    shared->status = body();
    shared->done.Notify();
  }).detach();
  if (!shared->done.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("nccl: ", what, " did not complete within ",
                                                    absl::ToInt64Milliseconds(timeout),
                                                    " ms (a peer died, hangs or never joined)"));
  }
  return shared->status;
}

}  // namespace

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  void* scratch = nullptr;  // device, kScratchBytes
  void* staging = nullptr;  // device, staging_bytes: host arrays on their way
  int64_t staging_bytes = 0;
  bool aborted = false;
};

NcclCommunicator::NcclCommunicator() : state_(std::make_unique<State>()) {}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (state_->comm != nullptr && !state_->aborted) {
    // A communicator that failed may still have work in flight that waits for a peer.
    if (broken_.empty()) {
      ncclCommDestroy(state_->comm);
    } else {
      ncclCommAbort(state_->comm);
    }
  }
  if (state_->scratch != nullptr) cudaFree(state_->scratch);
  if (state_->staging != nullptr) cudaFree(state_->staging);
  if (state_->stream != nullptr) cudaStreamDestroy(state_->stream);
}

absl::Status NcclCommunicator::Finish() {
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
  MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&state_->scratch, kScratchBytes));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemset(state_->scratch, 0, kScratchBytes));
  int rank = 0, size = 0;
  if (ncclCommUserRank(state_->comm, &rank) != ncclSuccess ||
      ncclCommCount(state_->comm, &size) != ncclSuccess) {
    return absl::InternalError("nccl: ncclCommUserRank / ncclCommCount failed");
  }
  rank_ = rank;
  size_ = size;
  return absl::OkStatus();
}

absl::Status NcclCommunicator::WarmUp(const std::vector<NcclCommunicator*>& comms) {
  // One group per kind of operation over every communicator of this process, so ranks driven
  // by one thread (CreateAll) meet inside each group.
  const auto group = [&](absl::string_view what,
                         const std::function<ncclResult_t(NcclCommunicator*, char*)>& op) {
    ncclResult_t r = ncclGroupStart();
    for (NcclCommunicator* c : comms) {
      if (!Accepted(r)) break;
      if (cudaSetDevice(c->device_) != cudaSuccess) return NcclError(what, ncclUnhandledCudaError);
      r = op(c, static_cast<char*>(c->state_->scratch));
    }
    const ncclResult_t end = ncclGroupEnd();
    return Accepted(r) && Accepted(end) ? absl::OkStatus() : NcclError(what, Accepted(r) ? end : r);
  };
  MOE_RETURN_IF_ERROR(group("warm-up send / recv", [](NcclCommunicator* c, char* s) {
    ncclResult_t r = ncclSuccess;
    for (int p = 0; p < c->size_ && Accepted(r); ++p) {
      r = ncclSend(s, 1, ncclInt8, p, c->state_->comm, c->state_->stream);
      if (Accepted(r))
        r = ncclRecv(s + 128 + p % 64, 1, ncclInt8, p, c->state_->comm, c->state_->stream);
    }
    return r;
  }));
  MOE_RETURN_IF_ERROR(group("warm-up all-reduce", [](NcclCommunicator* c, char* s) {
    return ncclAllReduce(s, s, 1, ncclInt32, ncclSum, c->state_->comm, c->state_->stream);
  }));
  MOE_RETURN_IF_ERROR(group("warm-up broadcast", [](NcclCommunicator* c, char* s) {
    return ncclBroadcast(s, s, 4, ncclInt8, 0, c->state_->comm, c->state_->stream);
  }));
  MOE_RETURN_IF_ERROR(group("warm-up all-gather", [](NcclCommunicator* c, char* s) {
    return ncclAllGather(s, s + 128, 1, ncclInt8, c->state_->comm, c->state_->stream);
  }));
  for (NcclCommunicator* c : comms) {
    MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(c->device_));
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(c->state_->stream));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    Communicator* bootstrap, int device, const CommunicatorOptions& options) {
  if (bootstrap == nullptr) return absl::InvalidArgumentError("nccl: bootstrap is null");
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: timeout=", absl::FormatDuration(options.timeout), " must be positive"));
  }
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap->rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return NcclError("ncclGetUniqueId", r);
  }
  MOE_RETURN_IF_ERROR(bootstrap->Broadcast(&id, sizeof(id), 0));
  const int rank = bootstrap->rank(), size = bootstrap->size();
  std::unique_ptr<NcclCommunicator> comm(new NcclCommunicator());
  comm->device_ = device;
  comm->timeout_ = options.timeout;
  NcclCommunicator* c = comm.get();
  const absl::Status ready = WithDeadline(
      std::max(options.timeout, kMinInitTimeout),
      absl::StrCat("initialising rank ", rank, " of ", size, " (device ", device, ")"),
      [c, id, rank, size]() -> absl::Status {
        MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(c->device_));
        const ncclResult_t r = ncclCommInitRank(&c->state_->comm, size, id, rank);
        if (r != ncclSuccess) {
          return NcclError(absl::StrCat("ncclCommInitRank on rank ", rank, " of ", size), r);
        }
        MOE_RETURN_IF_ERROR(c->Finish());
        return WarmUp({c});
      });
  if (absl::IsDeadlineExceeded(ready)) comm.release();  // still in use by the blocked thread
  MOE_RETURN_IF_ERROR(ready);
  return comm;
}

absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> NcclCommunicator::CreateAll(
    const std::vector<int>& devices, const CommunicatorOptions& options) {
  if (devices.empty()) return absl::InvalidArgumentError("nccl: no devices");
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: timeout=", absl::FormatDuration(options.timeout), " must be positive"));
  }
  const int size = static_cast<int>(devices.size());
  std::vector<std::unique_ptr<NcclCommunicator>> out;
  std::vector<NcclCommunicator*> raw;
  for (int i = 0; i < size; ++i) {
    out.emplace_back(new NcclCommunicator());
    out.back()->device_ = devices[i];
    out.back()->timeout_ = options.timeout;
    raw.push_back(out.back().get());
  }
  const absl::Status ready =
      WithDeadline(std::max(options.timeout, kMinInitTimeout),
                   absl::StrCat("initialising ", size, " devices in one process"),
                   [raw, size]() -> absl::Status {
                     // ncclCommInitAll's recipe: one unique id, every rank initialised in one
                     // group.
                     ncclUniqueId id;
                     ncclResult_t r = ncclGetUniqueId(&id);
                     if (r == ncclSuccess) r = ncclGroupStart();
                     for (int i = 0; i < size && r == ncclSuccess; ++i) {
                       MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(raw[i]->device_));
                       r = ncclCommInitRank(&raw[i]->state_->comm, size, id, i);
                     }
                     const ncclResult_t end = ncclGroupEnd();
                     if (r != ncclSuccess || end != ncclSuccess) {
                       return NcclError(absl::StrCat("initialising ", size, " devices"),
                                        r != ncclSuccess ? r : end);
                     }
                     for (NcclCommunicator* c : raw) MOE_RETURN_IF_ERROR(c->Finish());
                     return WarmUp(raw);
                   });
  if (absl::IsDeadlineExceeded(ready)) {
    for (auto& c : out) c.release();  // still in use by the blocked thread
  }
  MOE_RETURN_IF_ERROR(ready);
  return out;
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  if (broken_.empty()) broken_ = std::string(status.message());
  return status;
}

absl::Status NcclCommunicator::Start(absl::string_view op) {
  if (!broken_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ",
                                                      size_,
                                                      ": the communicator is broken by an "
                                                      "earlier failure: ",
                                                      broken_));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  // The buffers come from other streams (the backend's): finish what is queued first.
  MOE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Complete(absl::string_view op, int enqueued) {
  if (!Accepted(static_cast<ncclResult_t>(enqueued))) {
    return Fail(absl::InternalError(
        absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ", size_,
                     " failed: ", ncclGetErrorString(static_cast<ncclResult_t>(enqueued)), " (",
                     ncclGetLastError(state_->comm), ")")));
  }
  const absl::Time deadline = absl::Now() + timeout_;
  for (int64_t polls = 0;; ++polls) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(state_->comm, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(state_->comm);
      state_->aborted = true;
      return Fail(absl::InternalError(absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ",
                                                   size_, " failed: ", ncclGetErrorString(async))));
    }
    // ncclInProgress: NCCL is still enqueuing (e.g. connecting to the peers), so the stream
    // does not hold the collective yet.
    if (async == ncclSuccess) {
      const cudaError_t q = cudaStreamQuery(state_->stream);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        return Fail(absl::InternalError(absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ",
                                                     size_, " failed: ", cudaGetErrorName(q), " (",
                                                     cudaGetErrorString(q), ")")));
      }
    }
    if (absl::Now() >= deadline) {
      ncclCommAbort(state_->comm);
      state_->aborted = true;
      return Fail(TimedOut(kImpl, op));
    }
    if (polls >= 1000) absl::SleepFor(absl::Microseconds(20));
  }
}

absl::Status NcclCommunicator::AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                                         absl::Span<const int64_t> send_displs, void* recv,
                                         absl::Span<const int64_t> recv_counts,
                                         absl::Span<const int64_t> recv_displs) {
  MOE_RETURN_IF_ERROR(
      CheckAllToAllVArgs(kImpl, send_counts, send_displs, recv_counts, recv_displs));
  return SendRecv("all_to_all_v", send, send_counts, send_displs, recv, recv_counts, recv_displs);
}

absl::Status NcclCommunicator::SendRecv(absl::string_view op, const void* send,
                                        absl::Span<const int64_t> send_counts,
                                        absl::Span<const int64_t> send_displs, void* recv,
                                        absl::Span<const int64_t> recv_counts,
                                        absl::Span<const int64_t> recv_displs) {
  MOE_RETURN_IF_ERROR(Start(op));
  ncclResult_t r = ncclGroupStart();
  for (int p = 0; p < size_ && Accepted(r); ++p) {
    if (send_counts[p] > 0) {
      r = ncclSend(static_cast<const char*>(send) + send_displs[p], send_counts[p], ncclInt8, p,
                   state_->comm, state_->stream);
    }
    if (Accepted(r) && recv_counts[p] > 0) {
      r = ncclRecv(static_cast<char*>(recv) + recv_displs[p], recv_counts[p], ncclInt8, p,
                   state_->comm, state_->stream);
    }
  }
  const ncclResult_t end = ncclGroupEnd();
  return Complete(op, Accepted(r) ? end : r);
}

absl::Status NcclCommunicator::AllToAll(const void* send, void* recv, int64_t bytes_per_peer) {
  if (bytes_per_peer < 0) {
    return InvalidArgs(kImpl, "all_to_all",
                       absl::StrCat("bytes_per_peer=", bytes_per_peer, " is negative"));
  }
  std::vector<int64_t> counts(size_, bytes_per_peer), displs(size_);
  for (int p = 0; p < size_; ++p) displs[p] = p * bytes_per_peer;
  return SendRecv("all_to_all", send, counts, displs, recv, counts, displs);
}

absl::Status NcclCommunicator::AllGather(const void* send, void* recv, int64_t bytes) {
  constexpr absl::string_view kOp = "all_gather";
  if (bytes < 0) return InvalidArgs(kImpl, kOp, absl::StrCat("bytes=", bytes, " is negative"));
  MOE_RETURN_IF_ERROR(Start(kOp));
  return Complete(kOp, ncclAllGather(send, recv, bytes, ncclInt8, state_->comm, state_->stream));
}

absl::Status NcclCommunicator::ReserveStaging(int64_t bytes) {
  if (bytes <= state_->staging_bytes) return absl::OkStatus();
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (state_->staging != nullptr) {
    MOE_CUDA_RETURN_IF_ERROR(cudaFree(state_->staging));
    state_->staging = nullptr;
    state_->staging_bytes = 0;
  }
  // Grown in powers of two from 64 KiB, so a few calls settle it.
  int64_t size = int64_t{1} << 16;
  while (size < bytes) size *= 2;
  MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&state_->staging, size));
  state_->staging_bytes = size;
  return absl::OkStatus();
}

absl::Status NcclCommunicator::AllGatherHost(const void* send, void* recv, int64_t bytes) {
  if (bytes < 0) {
    return InvalidArgs(kImpl, "all_gather", absl::StrCat("bytes=", bytes, " is negative"));
  }
  MOE_RETURN_IF_ERROR(ReserveStaging(bytes * (size_ + 1)));
  char* mine = static_cast<char*>(state_->staging);
  char* all = mine + bytes;
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy(mine, send, bytes, cudaMemcpyHostToDevice));
  MOE_RETURN_IF_ERROR(AllGather(mine, all, bytes));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy(recv, all, bytes * size_, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::BroadcastHost(void* buffer, int64_t bytes, int root) {
  if (bytes < 0) {
    return InvalidArgs(kImpl, "broadcast", absl::StrCat("bytes=", bytes, " is negative"));
  }
  MOE_RETURN_IF_ERROR(ReserveStaging(bytes));
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (rank_ == root) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy(state_->staging, buffer, bytes, cudaMemcpyHostToDevice));
  }
  MOE_RETURN_IF_ERROR(Broadcast(state_->staging, bytes, root));
  if (rank_ != root) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy(buffer, state_->staging, bytes, cudaMemcpyDeviceToHost));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Broadcast(void* buffer, int64_t bytes, int root) {
  constexpr absl::string_view kOp = "broadcast";
  if (bytes < 0) return InvalidArgs(kImpl, kOp, absl::StrCat("bytes=", bytes, " is negative"));
  if (root < 0 || root >= size_) {
    return InvalidArgs(kImpl, kOp,
                       absl::StrCat("root=", root, " is outside [0, size=", size_, ")"));
  }
  MOE_RETURN_IF_ERROR(Start(kOp));
  return Complete(
      kOp, ncclBroadcast(buffer, buffer, bytes, ncclInt8, root, state_->comm, state_->stream));
}

absl::Status NcclCommunicator::Barrier() {
  constexpr absl::string_view kOp = "barrier";
  MOE_RETURN_IF_ERROR(Start(kOp));
  // A one-word sum completes only when every rank has joined.
  return Complete(kOp, ncclAllReduce(state_->scratch, state_->scratch, 1, ncclInt32, ncclSum,
                                     state_->comm, state_->stream));
}

}  // namespace moe
