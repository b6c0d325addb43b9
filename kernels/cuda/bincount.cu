#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/bincount.h"
#include "kernels/cuda/cuda_status.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;
// 48 KiB of uint32 counters: the shared memory a block gets without opting in to more.
constexpr int64_t kMaxSharedBins = 12288;
// Ids a block visits at most, so its uint32 shared counters cannot wrap.
constexpr int64_t kMaxIdsPerBlock = int64_t{1} << 31;
// Ids are int32, so no id reaches a bin past this one; the range check compares in uint32.
constexpr int64_t kMaxReachableBins = int64_t{1} << 31;

static_assert(sizeof(unsigned long long) == sizeof(int64_t), "64-bit atomics on int64 counts");
static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit atomic on uint64");

// Grid-stride loop over ids. kShared: count into per-block shared counters, then add each
// non-zero counter to the global count once; else add to the global counts directly (more bins
// than fit in shared memory). Negative ids become large uint32 values and fail the range check.
template <bool kShared>
__global__ void __launch_bounds__(kThreads)
    BincountKernel(const int32_t* __restrict__ ids, int64_t n, uint32_t bins,
                   unsigned long long* __restrict__ counts,
                   unsigned long long* __restrict__ invalid) {
  extern __shared__ unsigned int local[];
  if constexpr (kShared) {
    for (uint32_t b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
  }
  unsigned int bad = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const uint32_t id = static_cast<uint32_t>(ids[i]);
    if (id >= bins) {
      ++bad;
      continue;
    }
    if constexpr (kShared) {
      atomicAdd(&local[id], 1u);
    } else {
      atomicAdd(&counts[id], 1ull);
    }
  }
  if (bad != 0) atomicAdd(invalid, static_cast<unsigned long long>(bad));
  if constexpr (kShared) {
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < bins; b += blockDim.x) {
      if (local[b] != 0) atomicAdd(&counts[b], static_cast<unsigned long long>(local[b]));
    }
  }
}

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("bincount (cuda): ", what));
}

}  // namespace

absl::Status LaunchBincount(const BincountArgs& args, uint64_t* invalid_ids, cudaStream_t stream) {
  if (args.n < 0) return Invalid(absl::StrCat("n=", args.n, " is negative"));
  if (args.num_bins <= 0) {
    return Invalid(absl::StrCat("num_bins=", args.num_bins, " must be positive"));
  }
  if (args.counts == nullptr) return Invalid("counts is null");
  if (invalid_ids == nullptr) return Invalid("invalid_ids is null");
  if (args.n > 0 && args.ids == nullptr) return Invalid("ids is null");

  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(
      args.counts, 0, static_cast<size_t>(args.num_bins) * sizeof(int64_t), stream));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(invalid_ids, 0, sizeof(uint64_t), stream));
  if (args.n == 0) return absl::OkStatus();

  int device = 0;
  int sms = 0;
  MOE_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  MOE_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));

  // Enough blocks to fill the GPU a few times over, never more than the ids need, and never so
  // few that one block visits kMaxIdsPerBlock ids.
  int64_t blocks = std::min<int64_t>((args.n + kThreads - 1) / kThreads, int64_t{sms} * 8);
  blocks = std::max<int64_t>(blocks, (args.n + kMaxIdsPerBlock - 1) / kMaxIdsPerBlock);
  const uint32_t bins = static_cast<uint32_t>(std::min(args.num_bins, kMaxReachableBins));
  auto* counts = reinterpret_cast<unsigned long long*>(args.counts);
  auto* invalid = reinterpret_cast<unsigned long long*>(invalid_ids);
  if (args.num_bins <= kMaxSharedBins) {
    const size_t shared = static_cast<size_t>(bins) * sizeof(unsigned int);
    BincountKernel<true><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
        args.ids, args.n, bins, counts, invalid);
  } else {
    BincountKernel<false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        args.ids, args.n, bins, counts, invalid);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
