// Sequence-sharded tokens (sequence parallelism feeding expert parallelism): a batch of B
// sequences of L positions over P ranks, each rank holding a slice of every sequence.
//
// Rank r holds positions [r * L / P, (r + 1) * L / P) of each sequence (integer division: the
// slices differ by at most one position, and may be empty when P > L), sequence-major: its
// local token i is sequence b = i / L_r, position start_r + i % L_r, i.e. the global token
//   b * L + start_r + s        (MOE_SEMANTICS 7.7: batch-aware, the inverse of this split;
//                               torchtitan's r * L_r + i dropped the b * L term for B > 1).
#ifndef MOE_ENGINE_DIST_SEQUENCE_SHARD_H_
#define MOE_ENGINE_DIST_SEQUENCE_SHARD_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace moe {

class SequenceShard {
 public:
  // InvalidArgument unless batch >= 0, length >= 0, ranks >= 1 and 0 <= rank < ranks.
  static absl::StatusOr<SequenceShard> Create(int64_t batch, int64_t length, int ranks, int rank);

  int64_t slice_start() const { return start_; }
  int64_t slice_length() const { return end_ - start_; }
  // Tokens on this rank: batch * slice_length().
  int64_t local_tokens() const { return batch_ * slice_length(); }
  // The global token index (b * L + position) of local token i, 0 <= i < local_tokens().
  int64_t GlobalIndex(int64_t local) const {
    const int64_t b = local / slice_length(), s = local % slice_length();
    return b * length_ + start_ + s;
  }

 private:
  SequenceShard(int64_t batch, int64_t length, int64_t start, int64_t end)
      : batch_(batch), length_(length), start_(start), end_(end) {}

  int64_t batch_, length_, start_, end_;
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_SEQUENCE_SHARD_H_
