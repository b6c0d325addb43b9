// Private helpers of the CUDA kernels; include only from .cu files.
//
// - bf16 / f16 <-> fp32 conversions bit-identical to kernels/dtype.h and the CPU kernels, NaNs
//   included (bf16: the quieted top half; f16: sign | 0x7e00, and sign | 0x7fc00000 widened).
// - ExpF / SiluF / SigmoidF: the CPU kernels' exp (cpu_kernels_util.h), step for step, with
//   correctly rounded fma / add / mul / div intrinsics, so the bits do not depend on nvcc's
//   contraction setting and match the CPU exactly.
// - Pack<T, N>: N elements loaded or stored as one aligned vector (<= 16 bytes).
// - The data-error words of the ops that check indices on the device (see norm_rope.h and
//   rows.h): word 0 is the first bad row (kNoError when none), word 1 its index value.
#ifndef MOE_KERNELS_CUDA_KERNEL_UTIL_H_
#define MOE_KERNELS_CUDA_KERNEL_UTIL_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/dtype.h"

namespace moe::cuda::kernel_util {

// Element conversions. bf16 and f16 are the storage structs of kernels/dtype.h.
__device__ __forceinline__ float ToF32(float v) { return v; }
__device__ __forceinline__ float ToF32(bf16 v) {
  return __uint_as_float(static_cast<uint32_t>(v.bits) << 16);
}
__device__ __forceinline__ float ToF32(f16 v) {
  if ((v.bits & 0x7c00u) == 0x7c00u && (v.bits & 0x3ffu) != 0) {
    return __uint_as_float((static_cast<uint32_t>(v.bits & 0x8000u) << 16) | 0x7fc00000u);
  }
  return __half2float(__ushort_as_half(v.bits));
}

template <typename T>
__device__ __forceinline__ T FromF32(float f);
template <>
__device__ __forceinline__ float FromF32<float>(float f) {
  return f;
}
// Round to nearest even; a NaN keeps its sign and payload top bits, quieted (FloatToBf16).
template <>
__device__ __forceinline__ bf16 FromF32<bf16>(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
// cvt.rn.f16.f32 is round to nearest even with overflow to inf, as FloatToF16; only the NaN
// encoding differs, so NaN is done by hand.
template <>
__device__ __forceinline__ f16 FromF32<f16>(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return f16{static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7e00u)};
  }
  return f16{__half_as_ushort(__float2half_rn(f))};
}

// exp(x) as cpu_kernels::ExpF: Cody-Waite reduction and Cephes' polynomial, every fma explicit.
__device__ __forceinline__ float ExpF(float x) {
  constexpr float kHi = 88.72283935546875f;
  constexpr float kLo = -86.5f;
  const bool over = x > kHi;   // false for NaN, as __builtin_isgreater
  const bool under = x < kLo;  // false for NaN
  const float xc = over ? kHi : (under ? kLo : x);
  constexpr float kRound = 12582912.0f;
  const float n = __fsub_rn(__fmaf_rn(xc, 1.44269504088896341f, kRound), kRound);
  float r = __fmaf_rn(n, -0.693359375f, xc);
  r = __fmaf_rn(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = __fmaf_rn(p, r, 1.3981999507e-3f);
  p = __fmaf_rn(p, r, 8.3334519073e-3f);
  p = __fmaf_rn(p, r, 4.1665795894e-2f);
  p = __fmaf_rn(p, r, 1.6666665459e-1f);
  p = __fmaf_rn(p, r, 5.0000001201e-1f);
  p = __fadd_rn(__fmaf_rn(p, __fmul_rn(r, r), r), 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 126) << 23;
  const float y = __fmul_rn(__fmul_rn(p, __uint_as_float(bits)), 2.0f);
  return over ? __uint_as_float(0x7f800000u) : (under ? 0.0f : y);
}

// g / (1 + exp(-g)), as cpu_kernels::SiluF.
__device__ __forceinline__ float SiluF(float g) { return __fdiv_rn(g, __fadd_rn(1.0f, ExpF(-g))); }

// 1 / (1 + exp(-x)), as cpu_kernels::SigmoidF.
__device__ __forceinline__ float SigmoidF(float x) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, ExpF(-x)));
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> LoadPack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void StorePack(const Pack<T, N>& v, T* p) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

inline bool Aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Threads per block for rows of `work` items each: a multiple of 32 in [32, 256].
inline int ThreadsFor(int64_t work) {
  return static_cast<int>(std::clamp<int64_t>((work + 31) / 32 * 32, 32, 256));
}

// Grid-stride loops cover the rest: enough blocks to fill any current GPU several times.
constexpr int64_t kMaxBlocks = 4096;
constexpr int64_t kMaxGridY = 65535;

inline unsigned BlocksFor(int64_t items, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((items + threads - 1) / threads, 1, kMaxBlocks));
}

// ---- Device-checked indices ----------------------------------------------------------------

constexpr unsigned long long kNoError = ~0ull;
static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit atomics on uint64 words");

// error[0] = min of the i in [0, n) with values[i] < 0 or values[i] / divisor >= limit; left at
// kNoError (set by the caller) when all are in range. Writes nothing else.
template <typename Index>
__global__ void CheckIndicesKernel(const Index* __restrict__ values, int64_t n, int64_t divisor,
                                   int64_t limit, unsigned long long* __restrict__ error) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t v = values[i];
    if (v < 0 || v / divisor >= limit) {
      atomicMin(error, static_cast<unsigned long long>(i));
      return;  // later i of this thread are larger
    }
  }
}

// True when the check before this kernel failed: the kernel must then write nothing. The first
// thread of the grid records the bad value in error[1] for the host's message.
template <typename Index>
__device__ __forceinline__ bool CheckFailed(const Index* values, unsigned long long* error) {
  const unsigned long long first = error[0];
  if (first == kNoError) return false;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    error[1] = static_cast<unsigned long long>(static_cast<int64_t>(values[first]));
  }
  return true;
}

// Enqueues the reset of the two error words and the check of `n` values.
template <typename Index>
absl::Status EnqueueIndexCheck(const Index* values, int64_t n, int64_t divisor, int64_t limit,
                               uint64_t* error, cudaStream_t stream) {
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, 2 * sizeof(uint64_t), stream));
  constexpr int kThreads = 256;
  CheckIndicesKernel<<<BlocksFor(n, kThreads), kThreads, 0, stream>>>(
      values, n, divisor, limit, reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// Waits for `stream` and copies the two error words to `host`.
inline absl::Status ReadErrorWords(const uint64_t* error, cudaStream_t stream, uint64_t host[2]) {
  MOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host, error, 2 * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream));
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

}  // namespace moe::cuda::kernel_util

#endif  // MOE_KERNELS_CUDA_KERNEL_UTIL_H_
