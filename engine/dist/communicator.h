// Communicator: the collectives expert parallelism needs, over a fixed group of `size` ranks.
//
// Every call is collective: each rank of the group makes the same calls in the same order with
// agreeing sizes (a rank that takes another collective, or none, is a bug the timeout turns
// into a Status; see below). Buffers live in the memory of device() (host memory for the MPI
// and in-process implementations). Sizes and displacements are bytes unless a name says
// elements. A send buffer may not overlap the receive buffer, except where a call says so.
//
// Errors: every call returns absl::Status; the message names the implementation, the op, this
// rank and the limit, e.g.
//   "mpi: all_to_all_v on rank 0 of 4 did not complete within 2000 ms (a peer died, hangs or
//    never called it)"                                             (DeadlineExceeded)
// A timed-out or failed collective leaves the group unusable: every later call on this
// communicator returns FailedPrecondition naming the first failure, and the job should end.
// InvalidArgument for bad arguments (a count list of the wrong length, a negative count, a
// root outside the group), found before anything is sent.
//
// Thread-compatible: one thread at a time per communicator object.
#ifndef MOE_ENGINE_DIST_COMMUNICATOR_H_
#define MOE_ENGINE_DIST_COMMUNICATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace moe {

enum class ReduceOp { kSum, kMin, kMax };

struct CommunicatorOptions {
  // The longest any one collective may wait for its peers before it fails with
  // DeadlineExceeded. Must be positive.
  absl::Duration timeout = absl::Seconds(60);
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where the buffers of every call must be.
  virtual Device device() const = 0;
  virtual absl::Duration timeout() const = 0;

  // Personalised all-to-all: the send_counts[p] bytes at send + send_displs[p] go to rank p,
  // and the recv_counts[q] bytes from rank q land at recv + recv_displs[q]. Each list has
  // size() entries; recv_counts[q] must equal what rank q sends here (the callers exchange
  // counts first, e.g. with AllToAll). Zero counts are fine.
  virtual absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                                 absl::Span<const int64_t> send_displs, void* recv,
                                 absl::Span<const int64_t> recv_counts,
                                 absl::Span<const int64_t> recv_displs) = 0;

  // Equal-split all-to-all: block p of `send` (bytes_per_peer bytes at send + p * bytes_per_peer)
  // goes to rank p; block q of `recv` comes from rank q. Every rank passes the same
  // bytes_per_peer.
  virtual absl::Status AllToAll(const void* send, void* recv, int64_t bytes_per_peer) = 0;

  // recv[q * bytes .. (q + 1) * bytes) = rank q's `bytes` at send. Same bytes on every rank.
  virtual absl::Status AllGather(const void* send, void* recv, int64_t bytes) = 0;

  // recv[i] = op over ranks of send[i], i < count, for dtype in {i32, i64, f32}; send may
  // equal recv. send and recv are host memory whatever device() is. Computed as an all-gather
  // followed by a fold in ascending rank order on every rank, so every rank gets the same bits and
  // the result is a function of the inputs and size() only: integer sums are exact (wrapping on
  // overflow is not checked), min and max are exact, f32 sums are ((x_0 + x_1) + x_2) + ... rounded
  // after each add. Meant for small arrays (counts, flags): it moves size() * count elements to
  // every rank.
  absl::Status AllReduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op);

  // Rank root's `bytes` at buffer are copied to buffer on every rank.
  virtual absl::Status Broadcast(void* buffer, int64_t bytes, int root) = 0;

  // Returns once every rank has called it (or the timeout has passed).
  virtual absl::Status Barrier() = 0;

  // Host-memory forms of AllGather and Broadcast (control data: counts, flags, step plans),
  // whatever device() is: the calls themselves for host-memory communicators; a device
  // communicator stages through a device buffer of its own.
  virtual absl::Status AllGatherHost(const void* send, void* recv, int64_t bytes) {
    return AllGather(send, recv, bytes);
  }
  virtual absl::Status BroadcastHost(void* buffer, int64_t bytes, int root) {
    return Broadcast(buffer, bytes, root);
  }

 protected:
  // "<impl>: <op> on rank r of P: <what>" as InvalidArgument.
  absl::Status InvalidArgs(absl::string_view impl, absl::string_view op,
                           absl::string_view what) const;
  // Checks the per-peer lists of AllToAllV: size() entries each, no negative value.
  absl::Status CheckAllToAllVArgs(absl::string_view impl, absl::Span<const int64_t> send_counts,
                                  absl::Span<const int64_t> send_displs,
                                  absl::Span<const int64_t> recv_counts,
                                  absl::Span<const int64_t> recv_displs) const;
  // The DeadlineExceeded message of a collective that did not complete in time.
  absl::Status TimedOut(absl::string_view impl, absl::string_view op) const;
};

// Typed helpers over the byte calls: counts and displacements in elements of T.
template <typename T>
absl::Status AllToAllVElements(Communicator* comm, const T* send,
                               absl::Span<const int64_t> send_counts,
                               absl::Span<const int64_t> send_displs, T* recv,
                               absl::Span<const int64_t> recv_counts,
                               absl::Span<const int64_t> recv_displs) {
  const auto bytes = [](absl::Span<const int64_t> v) {
    std::vector<int64_t> out(v.begin(), v.end());
    for (int64_t& x : out) x *= static_cast<int64_t>(sizeof(T));
    return out;
  };
  return comm->AllToAllV(send, bytes(send_counts), bytes(send_displs), recv, bytes(recv_counts),
                         bytes(recv_displs));
}

}  // namespace moe

#endif  // MOE_ENGINE_DIST_COMMUNICATOR_H_
