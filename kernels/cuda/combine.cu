// A block per (token, range of columns): its threads first order the token's slots by (expert
// id, slot) in shared memory (each finds its slot's rank by comparing with the others), then
// each thread sums its columns over them in that order with __fmaf_rn, the CPU's std::fma, and
// rounds once.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

using kernel_util::FromF32;
using kernel_util::ToF32;

constexpr int64_t kMaxTokenBlocks = 65535;
constexpr int64_t kMaxColumnBlocks = 64;

// error[0] = the first s with slot_to_row[s] >= slots (negative entries are dropped slots).
__global__ void CheckRowsKernel(const int32_t* __restrict__ slot_to_row, int64_t slots,
                                unsigned long long* __restrict__ error) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < slots;
       s += stride) {
    if (slot_to_row[s] >= slots) {
      atomicMin(error, static_cast<unsigned long long>(s));
      return;  // later s of this thread are larger
    }
  }
}

template <typename T>
__global__ void CombineKernel(const T* __restrict__ y, int64_t y_ld,
                              const int32_t* __restrict__ slot_to_row,
                              const int32_t* __restrict__ ids, const float* __restrict__ weights,
                              int64_t tokens, int top_k, int64_t cols, bool add_to_out,
                              T* __restrict__ out, int64_t out_ld, unsigned long long* error) {
  if (kernel_util::CheckFailed(slot_to_row, error)) return;
  extern __shared__ int32_t order[];  // rows [top_k], then weights [top_k] (as float)
  int32_t* rows = order;
  float* w = reinterpret_cast<float*>(order + top_k);
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const int64_t first = t * top_k;
    for (int k = threadIdx.x; k < top_k; k += blockDim.x) {
      const int32_t id = ids[first + k];
      int rank = 0;
      for (int j = 0; j < top_k; ++j) {
        const int32_t other = ids[first + j];
        rank += (other < id || (other == id && j < k)) ? 1 : 0;
      }
      rows[rank] = slot_to_row[first + k];
      w[rank] = weights != nullptr ? weights[first + k] : 1.0f;
    }
    __syncthreads();
    T* dst = out + t * out_ld;
    // Read one element at a time: without volatile nvcc merged these shared loads into wider
    // ones that read past the end of the top_k entries (compute-sanitizer memcheck on H100).
    const volatile int32_t* sorted_rows = rows;
    const volatile float* sorted_w = w;
    for (int64_t c = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
         c += static_cast<int64_t>(blockDim.x) * gridDim.y) {
      float acc = 0.0f;
      for (int k = 0; k < top_k; ++k) {
        const int32_t r = sorted_rows[k];
        if (r < 0) continue;
        acc = __fmaf_rn(ToF32(y[static_cast<int64_t>(r) * y_ld + c]), sorted_w[k], acc);
      }
      if (add_to_out) {
        dst[c] = FromF32<T>(__fadd_rn(ToF32(FromF32<T>(acc)), ToF32(dst[c])));
      } else {
        dst[c] = FromF32<T>(acc);
      }
    }
    __syncthreads();
  }
}

template <typename T>
absl::Status LaunchCombineKernel(const CombineArgs& a, uint64_t* error, cudaStream_t stream) {
  const int threads = kernel_util::ThreadsFor(a.cols);
  // Blocks along the columns too (each orders the token's slots itself), so that a decode
  // step's few tokens still spread over many SMs.
  const dim3 blocks(static_cast<unsigned>(std::min(a.tokens, kMaxTokenBlocks)),
                    static_cast<unsigned>(std::min<int64_t>((a.cols + threads - 1) / threads,
                                                            kMaxColumnBlocks)));
  const size_t shared = static_cast<size_t>(a.top_k) * (sizeof(int32_t) + sizeof(float));
  CombineKernel<T><<<blocks, threads, shared, stream>>>(
      static_cast<const T*>(a.expert_out), a.expert_out_ld, a.slot_to_row, a.ids, a.weights,
      a.tokens, static_cast<int>(a.top_k), a.cols, a.add_to_out, static_cast<T*>(a.out), a.out_ld,
      reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchCombine(const CombineArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) return absl::InvalidArgumentError("combine (cuda): error is null");
  if (args.top_k > kCombineMaxTopK) {
    return absl::UnimplementedError(
        absl::StrCat("combine (cuda): top_k=", args.top_k, " exceeds ", kCombineMaxTopK));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, 2 * sizeof(uint64_t), stream));
  if (args.tokens <= 0 || args.cols <= 0 || args.top_k <= 0) return absl::OkStatus();
  const int64_t slots = args.tokens * args.top_k;
  constexpr int kCheckThreads = 256;
  CheckRowsKernel<<<kernel_util::BlocksFor(slots, kCheckThreads), kCheckThreads, 0, stream>>>(
      args.slot_to_row, slots, reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return args.dtype == DType::kBF16 ? LaunchCombineKernel<bf16>(args, error, stream)
                                    : LaunchCombineKernel<float>(args, error, stream);
}

absl::Status CombineDataError(const CombineArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kernel_util::kNoError) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "combine: slot_to_row[", host_error[0], "]=", static_cast<int64_t>(host_error[1]),
      " is outside the expert_out rows [0, tokens * top_k=", args.tokens * args.top_k, ")"));
}

absl::Status FinishCombine(const CombineArgs& args, const uint64_t* error, cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return CombineDataError(args, host);
}

}  // namespace moe::cuda
