#include "engine/dist/local_communicator.h"

#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

constexpr absl::string_view kImpl = "local";

// One rank's arguments to the collective in progress.
struct LocalPost {
  absl::string_view op;
  const void* send = nullptr;
  absl::Span<const int64_t> send_counts, send_displs, recv_counts, recv_displs;
  int64_t bytes = 0;
  int root = 0;
};

// The state the ranks of a group share.
class LocalBoard {
 public:
  LocalBoard(int size, absl::Duration timeout) : size_(size), timeout_(timeout), posts_(size) {}

  absl::Duration timeout() const { return timeout_; }
  const LocalPost& post(int q) const { return *posts_[q]; }

  // Waits until every rank has called Meet as often as this one (the first meeting of a
  // collective also publishes `post`). DeadlineExceeded (from `timed_out`) past the timeout,
  // FailedPrecondition if the group is broken.
  absl::Status Meet(const LocalPost* post, int rank, const absl::Status& timed_out) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!broken_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(kImpl, ": ", post->op, " on rank ", rank, " of ", size_,
                       ": the group is broken by an earlier failure: ", broken_));
    }
    posts_[rank] = post;
    const int64_t generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return absl::OkStatus();
    }
    const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout_);
    while (generation_ == generation) {
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && generation_ == generation) {
        Break(timed_out.message());
        return timed_out;
      }
    }
    return absl::OkStatus();
  }

  void BreakGroup(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    Break(status.message());
  }

 private:
  void Break(absl::string_view why) {
    if (broken_.empty()) broken_ = std::string(why);
  }

  const int size_;
  const absl::Duration timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  std::vector<const LocalPost*> posts_;
  std::string broken_;
};

namespace {

class LocalCommunicator : public Communicator {
 public:
  LocalCommunicator(LocalBoard* board, int rank, int size)
      : board_(board), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::Cpu(); }
  absl::Duration timeout() const override { return board_->timeout(); }

  absl::Status AllToAllV(const void* send, absl::Span<const int64_t> send_counts,
                         absl::Span<const int64_t> send_displs, void* recv,
                         absl::Span<const int64_t> recv_counts,
                         absl::Span<const int64_t> recv_displs) override {
    MOE_RETURN_IF_ERROR(
        CheckAllToAllVArgs(kImpl, send_counts, send_displs, recv_counts, recv_displs));
    LocalPost post{"all_to_all_v", send, send_counts, send_displs, recv_counts, recv_displs};
    return Run(
        post,
        [&]() -> absl::Status {
          for (int p = 0; p < size_; ++p) {
            for (int q = 0; q < size_; ++q) {
              const int64_t sent = board_->post(p).send_counts[q];
              const int64_t expected = board_->post(q).recv_counts[p];
              if (sent != expected) {
                return InvalidArgs(kImpl, "all_to_all_v",
                                   absl::StrCat("rank ", p, " sends ", sent, " bytes to rank ", q,
                                                ", which expects ", expected));
              }
            }
          }
          return absl::OkStatus();
        },
        [&]() {
          for (int q = 0; q < size_; ++q) {
            const LocalPost& peer = board_->post(q);
            if (recv_counts[q] == 0) continue;
            std::memcpy(static_cast<uint8_t*>(recv) + recv_displs[q],
                        static_cast<const uint8_t*>(peer.send) + peer.send_displs[rank_],
                        recv_counts[q]);
          }
        });
  }

  absl::Status AllToAll(const void* send, void* recv, int64_t bytes_per_peer) override {
    MOE_RETURN_IF_ERROR(CheckBytes("all_to_all", bytes_per_peer));
    LocalPost post{"all_to_all", send};
    post.bytes = bytes_per_peer;
    return Run(
        post, [&] { return SameBytes("all_to_all"); },
        [&]() {
          for (int q = 0; q < size_; ++q) {
            std::memcpy(static_cast<uint8_t*>(recv) + q * bytes_per_peer,
                        static_cast<const uint8_t*>(board_->post(q).send) + rank_ * bytes_per_peer,
                        bytes_per_peer);
          }
        });
  }

  absl::Status AllGather(const void* send, void* recv, int64_t bytes) override {
    MOE_RETURN_IF_ERROR(CheckBytes("all_gather", bytes));
    LocalPost post{"all_gather", send};
    post.bytes = bytes;
    return Run(
        post, [&] { return SameBytes("all_gather"); },
        [&]() {
          for (int q = 0; q < size_; ++q) {
            if (bytes == 0) continue;
            std::memcpy(static_cast<uint8_t*>(recv) + q * bytes, board_->post(q).send, bytes);
          }
        });
  }

  absl::Status Broadcast(void* buffer, int64_t bytes, int root) override {
    MOE_RETURN_IF_ERROR(CheckBytes("broadcast", bytes));
    if (root < 0 || root >= size_) {
      return InvalidArgs(kImpl, "broadcast",
                         absl::StrCat("root=", root, " is outside [0, size=", size_, ")"));
    }
    LocalPost post{"broadcast", buffer};
    post.bytes = bytes;
    post.root = root;
    return Run(
        post,
        [&]() -> absl::Status {
          MOE_RETURN_IF_ERROR(SameBytes("broadcast"));
          for (int q = 0; q < size_; ++q) {
            if (board_->post(q).root != root) {
              return InvalidArgs(kImpl, "broadcast",
                                 absl::StrCat("rank ", q, " passes root=", board_->post(q).root,
                                              ", rank ", rank_, " root=", root));
            }
          }
          return absl::OkStatus();
        },
        [&]() {
          if (rank_ != root && bytes > 0) std::memcpy(buffer, board_->post(root).send, bytes);
        });
  }

  absl::Status Barrier() override {
    LocalPost post{"barrier"};
    return Run(
        post, [] { return absl::OkStatus(); }, [] {});
  }

 private:
  absl::Status CheckBytes(absl::string_view op, int64_t bytes) const {
    if (bytes < 0) return InvalidArgs(kImpl, op, absl::StrCat("bytes=", bytes, " is negative"));
    return absl::OkStatus();
  }

  // Every rank computes this over the same posts, so all return the same Status.
  absl::Status SameBytes(absl::string_view op) const {
    for (int q = 1; q < size_; ++q) {
      if (board_->post(q).bytes != board_->post(0).bytes) {
        return InvalidArgs(kImpl, op,
                           absl::StrCat("rank ", q, " passes bytes=", board_->post(q).bytes,
                                        ", rank 0 bytes=", board_->post(0).bytes));
      }
    }
    return absl::OkStatus();
  }

  // Meet (publish `post`), check the posts, copy, meet again so that no post or send buffer
  // goes away while a peer still reads it. A failed check is the same on every rank (all read
  // the same posts); it breaks the group only after the second meeting.
  absl::Status Run(const LocalPost& post, const std::function<absl::Status()>& check,
                   const std::function<void()>& copy) {
    MOE_RETURN_IF_ERROR(board_->Meet(&post, rank_, TimedOut(kImpl, post.op)));
    absl::Status status = SameOp(post.op);
    if (status.ok()) status = check();
    if (status.ok()) copy();
    const absl::Status met = board_->Meet(&post, rank_, TimedOut(kImpl, post.op));
    if (!status.ok()) {
      board_->BreakGroup(status);
      return status;
    }
    return met;
  }

  absl::Status SameOp(absl::string_view op) const {
    for (int q = 0; q < size_; ++q) {
      if (board_->post(q).op != op) {
        return absl::InternalError(absl::StrCat(kImpl, ": ", op, " on rank ", rank_, " of ", size_,
                                                ": rank ", q, " called ", board_->post(q).op,
                                                " instead"));
      }
    }
    return absl::OkStatus();
  }

  LocalBoard* board_;
  const int rank_;
  const int size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LocalCommunicatorGroup>> LocalCommunicatorGroup::Create(
    int size, const CommunicatorOptions& options) {
  if (size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("local: size=", size, " must be at least 1"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "local: timeout=", absl::FormatDuration(options.timeout), " must be positive"));
  }
  std::unique_ptr<LocalCommunicatorGroup> group(new LocalCommunicatorGroup());
  group->board_ = std::make_unique<LocalBoard>(size, options.timeout);
  for (int r = 0; r < size; ++r) {
    group->ranks_.push_back(std::make_unique<LocalCommunicator>(group->board_.get(), r, size));
  }
  return group;
}

LocalCommunicatorGroup::~LocalCommunicatorGroup() = default;

}  // namespace moe
