// Three kernels on one stream: the counts' check (one block: the CPU's loop as a scan), the
// placement (a block per expert range; ballots and per-warp counts give each slot its rank among the equal
// ids before it, so the order is the CPU's and no atomics decide it), and the error value.
//
// Error word 0 orders the CPU's checks: a bad count at e is e, a wrong sum is kSumError, a bad
// slot i is kSlotError | i; atomicMin over the slots then keeps the first one, as the CPU's
// serial loop reports it. Word 1: the count, the sum, or (id << 32) | counts[id].
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/expert_order.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

constexpr unsigned long long kSumError = 1ull << 62;
constexpr unsigned long long kSlotError = 2ull << 62;
constexpr unsigned long long kPositionMask = (1ull << 62) - 1;
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxPlaceBlocks = 1024;

// The CPU's serial check in parallel, one block: counts[e] is bad when negative or above n
// minus the sum of the counts before it, and the first bad e is reported. For every e up to
// the first bad one the prefix sum is the CPU's running total; past it, nothing matters (the
// minimum bad e is kept).
__global__ void __launch_bounds__(kThreads)
    CheckCountsKernel(const int64_t* __restrict__ counts, int64_t num_experts, int64_t n,
                      unsigned long long* __restrict__ error) {
  __shared__ int64_t warp_sums[kWarps];
  __shared__ unsigned long long first_bad;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) first_bad = ~0ull;
  int64_t before = 0;  // sum of the counts of earlier chunks
  for (int64_t e0 = 0; e0 < num_experts; e0 += kThreads) {
    const int64_t e = e0 + threadIdx.x;
    const int64_t c = e < num_experts ? counts[e] : 0;
    int64_t inclusive = c;  // within the warp
    for (int off = 1; off < 32; off *= 2) {
      const int64_t v = __shfl_up_sync(0xffffffffu, inclusive, off);
      if (lane >= off) inclusive += v;
    }
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    int64_t prefix = before;  // counts before e
    int64_t chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      prefix += w < warp ? warp_sums[w] : 0;
      chunk += warp_sums[w];
    }
    prefix += inclusive - c;
    if (e < num_experts && (c < 0 || c > n - prefix)) {
      atomicMin(&first_bad, static_cast<unsigned long long>(e));
    }
    before += chunk;
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (first_bad != ~0ull) {
    error[0] = first_bad;
    error[1] = static_cast<unsigned long long>(counts[first_bad]);
  } else if (before != n) {
    error[0] = kSumError;
    error[1] = static_cast<unsigned long long>(before);
  }
}

__device__ __forceinline__ int64_t BlockSum(int64_t v, int64_t* shared) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  int64_t sum = 0;
  for (int w = 0; w < kWarps; ++w) sum += shared[w];
  __syncthreads();
  return sum;
}

// Block b places the slots of experts [b * per_block, (b + 1) * per_block), one expert at a
// time, walking the ids in tiles of kThreads: a slot's row is its expert's first row plus the
// number of equal ids before it (earlier tiles, earlier warps, earlier lanes). Block 0 also
// reports ids outside [0, num_experts) on its first walk.
__global__ void __launch_bounds__(kThreads)
    PlaceKernel(const int32_t* __restrict__ ids, int64_t n, const int64_t* __restrict__ counts,
                int64_t num_experts, int64_t per_block, int32_t* __restrict__ sorted_slots,
                int32_t* __restrict__ slot_to_row, unsigned long long* error) {
  // A count error (set by CheckCountsKernel) stops everything; slot errors of other blocks
  // must not, so that the first bad slot is still found.
  if (*reinterpret_cast<volatile unsigned long long*>(error) < kSlotError) return;
  __shared__ int64_t partial[kWarps];
  __shared__ int warp_count[kWarps];
  const int64_t e0 = static_cast<int64_t>(blockIdx.x) * per_block;
  if (e0 >= num_experts) return;
  const int64_t e1 = min(num_experts, e0 + per_block);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned lanes_below = (1u << lane) - 1u;

  int64_t part = 0;
  for (int64_t e = threadIdx.x; e < e0; e += kThreads) part += counts[e];
  int64_t base = BlockSum(part, partial);

  for (int64_t e = e0; e < e1; ++e) {
    const int64_t count = counts[e];
    const bool check_ids = blockIdx.x == 0 && e == e0;
    int64_t placed = 0;
    for (int64_t t0 = 0; t0 < n; t0 += kThreads) {
      const int64_t i = t0 + threadIdx.x;
      const int32_t id = i < n ? ids[i] : -1;
      if (check_ids && i < n && (id < 0 || id >= num_experts)) {
        atomicMin(error, kSlotError | static_cast<unsigned long long>(i));
      }
      const bool mine = i < n && id == e;
      const unsigned mask = __ballot_sync(0xffffffffu, mine);
      if (lane == 0) warp_count[warp] = __popc(mask);
      __syncthreads();
      int before = 0, total = 0;
      for (int w = 0; w < kWarps; ++w) {
        const int c = warp_count[w];
        before += w < warp ? c : 0;
        total += c;
      }
      if (mine) {
        const int64_t rank = placed + before + __popc(mask & lanes_below);
        if (rank < count) {
          const int64_t row = base + rank;
          sorted_slots[row] = static_cast<int32_t>(i);
          slot_to_row[i] = static_cast<int32_t>(row);
        } else if (rank == count) {
          atomicMin(error, kSlotError | static_cast<unsigned long long>(i));
        }
      }
      placed += total;
      __syncthreads();
    }
    base += count;
  }
}

__global__ void SlotErrorValueKernel(const int32_t* __restrict__ ids,
                                     const int64_t* __restrict__ counts, int64_t num_experts,
                                     unsigned long long* __restrict__ error) {
  const unsigned long long word = error[0];
  if (word == kernel_util::kNoError || word < kSlotError) return;
  const int32_t id = ids[word & kPositionMask];
  const int64_t c = id >= 0 && id < num_experts ? counts[id] : 0;
  error[1] =
      (static_cast<unsigned long long>(static_cast<uint32_t>(id)) << 32) | static_cast<uint32_t>(c);
}

}  // namespace

absl::Status LaunchExpertOrder(const ExpertOrderArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) {
    return absl::InvalidArgumentError("expert_order (cuda): error is null");
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, 2 * sizeof(uint64_t), stream));
  if (args.n <= 0) return absl::OkStatus();
  auto* words = reinterpret_cast<unsigned long long*>(error);
  CheckCountsKernel<<<1, kThreads, 0, stream>>>(args.counts, args.num_experts, args.n, words);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t per_block = (args.num_experts + kMaxPlaceBlocks - 1) / kMaxPlaceBlocks;
  const int64_t blocks = (args.num_experts + per_block - 1) / per_block;
  PlaceKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      args.ids, args.n, args.counts, args.num_experts, per_block, args.sorted_slots,
      args.slot_to_row, words);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  SlotErrorValueKernel<<<1, 1, 0, stream>>>(args.ids, args.counts, args.num_experts, words);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status ExpertOrderDataError(const ExpertOrderArgs& args, const uint64_t host_error[2]) {
  constexpr absl::string_view kOp = "expert_order";
  const uint64_t word = host_error[0];
  if (word == kernel_util::kNoError) return absl::OkStatus();
  if (word < kSumError) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": counts[", word, "]=", static_cast<int64_t>(host_error[1]),
                     " is negative or makes the counts exceed n=", args.n));
  }
  if (word < kSlotError) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": counts sum to ", static_cast<int64_t>(host_error[1]), ", expected n=", args.n));
  }
  const uint64_t pos = word & kPositionMask;
  const int32_t id = static_cast<int32_t>(static_cast<uint32_t>(host_error[1] >> 32));
  if (id < 0 || id >= args.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ids[", pos, "]=", id, " is outside [0, num_experts=", args.num_experts, ")"));
  }
  const int64_t count = static_cast<uint32_t>(host_error[1]);
  return absl::InvalidArgumentError(
      absl::StrCat(kOp, ": expert ", id, " occurs more often than counts[", id, "]=", count));
}

absl::Status FinishExpertOrder(const ExpertOrderArgs& args, const uint64_t* error,
                               cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return ExpertOrderDataError(args, host);
}

}  // namespace moe::cuda
