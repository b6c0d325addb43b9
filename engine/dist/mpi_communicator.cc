#include "engine/dist/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

constexpr absl::string_view kImpl = "mpi";

std::string MpiMessage(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) return absl::StrCat("MPI error ", rc);
  return std::string(text, length);
}

}  // namespace

struct MpiCommunicator::State {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Request request = MPI_REQUEST_NULL;
  bool pending = false;  // `request` was abandoned by a timeout and may still run
  // MPI_Ialltoallv's int arrays; they must outlive the request.
  std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
};

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    return absl::FailedPreconditionError("mpi: MPI is already initialised in this process");
  }
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("mpi: MPI_Init_thread failed: ", MpiMessage(rc)));
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::FailedPreconditionError(absl::StrCat("mpi: MPI_Init_thread provides thread level ",
                                                      provided, ", below MPI_THREAD_SERIALIZED (",
                                                      MPI_THREAD_SERIALIZED, ")"));
  }
  std::unique_ptr<MpiRuntime> runtime(new MpiRuntime());
  MPI_Comm_rank(MPI_COMM_WORLD, &runtime->world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &runtime->world_size_);
  return runtime;
}

MpiRuntime::~MpiRuntime() { MPI_Finalize(); }

void MpiRuntime::Abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] true if it did
}

MpiCommunicator::MpiCommunicator() : state_(std::make_unique<State>()) {}

MpiCommunicator::~MpiCommunicator() {
  if (state_->pending) {
    int done = 0;
    MPI_Test(&state_->request, &done, MPI_STATUS_IGNORE);
    if (!done) {
      // MPI may still use the request, its arrays and the communicator: never free them.
      state_.release();
      return;
    }
  }
  MPI_Comm_free(&state_->comm);
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::CreateWorld(
    const CommunicatorOptions& options) {
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("mpi: timeout=", absl::FormatDuration(options.timeout), " must be positive"));
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return absl::FailedPreconditionError("mpi: MPI is not initialised (MpiRuntime::Init)");
  }
  std::unique_ptr<MpiCommunicator> comm(new MpiCommunicator());
  comm->timeout_ = options.timeout;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm->state_->comm);
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("mpi: MPI_Comm_dup failed: ", MpiMessage(rc)));
  }
  MPI_Comm_set_errhandler(comm->state_->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm->state_->comm, &comm->rank_);
  MPI_Comm_size(comm->state_->comm, &comm->size_);
  return comm;
}

absl::Status MpiCommunicator::CheckUsable(absl::string_view op) const {
  if (broken_.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ",
                                                    size_,
                                                    ": the communicator is broken by an earlier "
                                                    "failure: ",
                                                    broken_));
}

absl::Status MpiCommunicator::ToInts(absl::string_view op, absl::string_view name,
                                     absl::Span<const int64_t> values,
                                     std::vector<int>* out) const {
  out->resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] < 0 || values[i] > INT_MAX) {
      return InvalidArgs(kImpl, op,
                         absl::StrCat(name, "[", i, "]=", values[i], " is outside [0, ", INT_MAX,
                                      "] (MPI's int counts)"));
    }
    (*out)[i] = static_cast<int>(values[i]);
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Complete(absl::string_view op, int start_rc) {
  if (start_rc != MPI_SUCCESS) {
    const absl::Status s = absl::InternalError(absl::StrCat(
        kImpl, ": ", op, " on rank ", rank_, " of ", size_, " failed: ", MpiMessage(start_rc)));
    broken_ = std::string(s.message());
    return s;
  }
  const absl::Time deadline = absl::Now() + timeout_;
  for (int64_t polls = 0;; ++polls) {
    int done = 0;
    const int rc = MPI_Test(&state_->request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      const absl::Status s = absl::InternalError(absl::StrCat(
          kImpl, ": ", op, " on rank ", rank_, " of ", size_, " failed: ", MpiMessage(rc)));
      broken_ = std::string(s.message());
      return s;
    }
    if (done) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      state_->pending = true;
      const absl::Status s = TimedOut(kImpl, op);
      broken_ = std::string(s.message());
      return s;
    }
    // Spin briefly for latency, then yield the core: ranks may share cores (--oversubscribe).
    if (polls >= 1000) absl::SleepFor(absl::Microseconds(50));
  }
}

absl::Status MpiCommunicator::AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                                        absl::Span<const int64_t> send_displs, void* recv,
                                        absl::Span<const int64_t> recv_counts,
                                        absl::Span<const int64_t> recv_displs) {
  constexpr absl::string_view kOp = "all_to_all_v";
  MOE_RETURN_IF_ERROR(CheckUsable(kOp));
  MOE_RETURN_IF_ERROR(
      CheckAllToAllVArgs(kImpl, send_counts, send_displs, recv_counts, recv_displs));
  State& st = *state_;
  MOE_RETURN_IF_ERROR(ToInts(kOp, "send_counts", send_counts, &st.send_counts));
  MOE_RETURN_IF_ERROR(ToInts(kOp, "send_displs", send_displs, &st.send_displs));
  MOE_RETURN_IF_ERROR(ToInts(kOp, "recv_counts", recv_counts, &st.recv_counts));
  MOE_RETURN_IF_ERROR(ToInts(kOp, "recv_displs", recv_displs, &st.recv_displs));
  return Complete(kOp, MPI_Ialltoallv(send, st.send_counts.data(), st.send_displs.data(), MPI_BYTE,
                                      recv, st.recv_counts.data(), st.recv_displs.data(), MPI_BYTE,
                                      st.comm, &st.request));
}

absl::Status MpiCommunicator::AllToAll(const void* send, void* recv, int64_t bytes_per_peer) {
  constexpr absl::string_view kOp = "all_to_all";
  MOE_RETURN_IF_ERROR(CheckUsable(kOp));
  std::vector<int> bytes;
  MOE_RETURN_IF_ERROR(ToInts(kOp, "bytes_per_peer", {bytes_per_peer}, &bytes));
  return Complete(kOp, MPI_Ialltoall(send, bytes[0], MPI_BYTE, recv, bytes[0], MPI_BYTE,
                                     state_->comm, &state_->request));
}

absl::Status MpiCommunicator::AllGather(const void* send, void* recv, int64_t bytes) {
  constexpr absl::string_view kOp = "all_gather";
  MOE_RETURN_IF_ERROR(CheckUsable(kOp));
  std::vector<int> n;
  MOE_RETURN_IF_ERROR(ToInts(kOp, "bytes", {bytes}, &n));
  return Complete(kOp, MPI_Iallgather(send, n[0], MPI_BYTE, recv, n[0], MPI_BYTE, state_->comm,
                                      &state_->request));
}

absl::Status MpiCommunicator::Broadcast(void* buffer, int64_t bytes, int root) {
  constexpr absl::string_view kOp = "broadcast";
  MOE_RETURN_IF_ERROR(CheckUsable(kOp));
  if (root < 0 || root >= size_) {
    return InvalidArgs(kImpl, kOp,
                       absl::StrCat("root=", root, " is outside [0, size=", size_, ")"));
  }
  std::vector<int> n;
  MOE_RETURN_IF_ERROR(ToInts(kOp, "bytes", {bytes}, &n));
  return Complete(kOp, MPI_Ibcast(buffer, n[0], MPI_BYTE, root, state_->comm, &state_->request));
}

absl::Status MpiCommunicator::Barrier() {
  constexpr absl::string_view kOp = "barrier";
  MOE_RETURN_IF_ERROR(CheckUsable(kOp));
  return Complete(kOp, MPI_Ibarrier(state_->comm, &state_->request));
}

}  // namespace moe
