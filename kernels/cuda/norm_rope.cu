// Every fp32 operation is a _rn intrinsic, so nvcc cannot contract a multiply and an add.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/cuda/norm_rope.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

using kernel_util::FromF32;
using kernel_util::LoadPack;
using kernel_util::Pack;
using kernel_util::StorePack;
using kernel_util::ToF32;

// ---- RmsNorm -----------------------------------------------------------------------------

constexpr int kNormThreads = 256;
// Squares staged per step: a multiple of 8 (lane of element j = j mod 8 within a chunk too) and
// of every vector width.
constexpr int kNormChunk = 2048;

__device__ __forceinline__ float NormValue(float x, float w, float inv) {
  return __fmul_rn(w, __fmul_rn(x, inv));
}
// HF's bf16 order: the normalized row rounds to bf16, then the weight multiplies it.
__device__ __forceinline__ float NormValue(bf16 x, bf16 w, float inv) {
  const float normed = ToF32(FromF32<bf16>(__fmul_rn(ToF32(x), inv)));
  return __fmul_rn(ToF32(w), normed);
}

template <typename T, int N>
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const T* x, int64_t x_ld, const T* __restrict__ w, float eps, T* out,
                  int64_t out_ld, int64_t rows, int64_t cols, int64_t rows_per_group,
                  int64_t group_ld) {
  __shared__ float squares[kNormChunk];
  __shared__ float lanes[8];
  __shared__ float inv_rms;
  const int tid = threadIdx.x;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    // The row's place (RmsNormRowOffset, backend.h).
    const int64_t group = rows_per_group > 0 ? r / rows_per_group : 0;
    const int64_t in_group = rows_per_group > 0 ? r % rows_per_group : r;
    const T* xr = x + group * group_ld + in_group * x_ld;
    // Threads 0..7 each own one lane's sequential sum across the chunks.
    float lane = 0.0f;
    for (int64_t c0 = 0; c0 < cols; c0 += kNormChunk) {
      const int len = static_cast<int>(min(static_cast<int64_t>(kNormChunk), cols - c0));
      const int nvec = len / N;
      for (int k = tid; k < nvec; k += kNormThreads) {
        const Pack<T, N> p = LoadPack<T, N>(xr + c0 + k * N);
#pragma unroll
        for (int e = 0; e < N; ++e) {
          const float v = ToF32(p.v[e]);
          squares[k * N + e] = __fmul_rn(v, v);
        }
      }
      for (int k = nvec * N + tid; k < len; k += kNormThreads) {
        const float v = ToF32(xr[c0 + k]);
        squares[k] = __fmul_rn(v, v);
      }
      __syncthreads();
      if (tid < 8) {
#pragma unroll 8
        for (int k = tid; k < len; k += 8) lane = __fadd_rn(lane, squares[k]);
      }
      __syncthreads();
    }
    if (tid < 8) lanes[tid] = lane;
    __syncthreads();
    if (tid == 0) {
      const float sum =
          __fadd_rn(__fadd_rn(__fadd_rn(lanes[0], lanes[1]), __fadd_rn(lanes[2], lanes[3])),
                    __fadd_rn(__fadd_rn(lanes[4], lanes[5]), __fadd_rn(lanes[6], lanes[7])));
      const float mean = __fdiv_rn(sum, static_cast<float>(cols));
      inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
    }
    __syncthreads();
    const float inv = inv_rms;
    T* o = out + group * group_ld + in_group * out_ld;
    const int64_t nvec = cols / N;
    for (int64_t k = tid; k < nvec; k += kNormThreads) {
      const Pack<T, N> px = LoadPack<T, N>(xr + k * N);
      const Pack<T, N> pw = LoadPack<T, N>(w + k * N);
      Pack<T, N> po;
#pragma unroll
      for (int e = 0; e < N; ++e) po.v[e] = FromF32<T>(NormValue(px.v[e], pw.v[e], inv));
      StorePack<T, N>(po, o + k * N);
    }
    for (int64_t j = nvec * N + tid; j < cols; j += kNormThreads) {
      o[j] = FromF32<T>(NormValue(xr[j], w[j], inv));
    }
    // The next row writes `squares`, `lanes` and `inv_rms` only after barriers that every
    // thread reaches once done with this row's reads of them.
  }
}

template <typename T>
absl::Status RmsNormAs(const RmsNormArgs& args, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<T>;
  const auto* x = static_cast<const T*>(args.x);
  const auto* w = static_cast<const T*>(args.weight);
  auto* out = static_cast<T*>(args.out);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(args.rows, int64_t{1} << 20));
  const bool vec = kernel_util::Aligned(x, 16) && kernel_util::Aligned(w, 16) &&
                   kernel_util::Aligned(out, 16) && args.x_ld % kN == 0 && args.out_ld % kN == 0 &&
                   args.group_ld % kN == 0;
  if (vec) {
    RmsNormKernel<T, kN><<<blocks, kNormThreads, 0, stream>>>(x, args.x_ld, w, args.eps, out,
                                                              args.out_ld, args.rows, args.cols,
                                                              args.rows_per_group, args.group_ld);
  } else {
    RmsNormKernel<T, 1><<<blocks, kNormThreads, 0, stream>>>(x, args.x_ld, w, args.eps, out,
                                                             args.out_ld, args.rows, args.cols,
                                                              args.rows_per_group, args.group_ld);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// ---- Rope --------------------------------------------------------------------------------

// One thread rotates V consecutive pairs of one head: kHalf reads V elements at i and V at
// i + half, kInterleaved 2V elements at 2i (V = 1: two scalar accesses, for any alignment);
// cos / sin V floats at i.
template <typename T, bool kInterleaved, int V>
__global__ void RopeKernel(T* __restrict__ x, int64_t ld, int64_t rows, int64_t heads,
                           int64_t head_dim, int64_t half, const int32_t* __restrict__ positions,
                           const float* __restrict__ cos, const float* __restrict__ sin,
                           unsigned long long* error) {
  if (kernel_util::CheckFailed(positions, error)) return;
  const int64_t groups = half / V;
  const int64_t items = heads * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t p = positions[r];
    T* row = x + r * ld;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
         k += stride) {
      const int64_t h = k / groups;
      const int64_t i0 = (k - h * groups) * V;
      const Pack<float, V> c = LoadPack<float, V>(cos + p * half + i0);
      const Pack<float, V> s = LoadPack<float, V>(sin + p * half + i0);
      T* head = row + h * head_dim;
      float a[V];
      float b[V];
      if constexpr (kInterleaved && V == 1) {
        a[0] = ToF32(head[2 * i0]);
        b[0] = ToF32(head[2 * i0 + 1]);
      } else if constexpr (kInterleaved) {
        const Pack<T, 2 * V> v = LoadPack<T, 2 * V>(head + 2 * i0);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          a[e] = ToF32(v.v[2 * e]);
          b[e] = ToF32(v.v[2 * e + 1]);
        }
      } else {
        const Pack<T, V> va = LoadPack<T, V>(head + i0);
        const Pack<T, V> vb = LoadPack<T, V>(head + i0 + half);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          a[e] = ToF32(va.v[e]);
          b[e] = ToF32(vb.v[e]);
        }
      }
      T na[V];
      T nb[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        na[e] = FromF32<T>(__fsub_rn(__fmul_rn(a[e], c.v[e]), __fmul_rn(b[e], s.v[e])));
        nb[e] = FromF32<T>(__fadd_rn(__fmul_rn(b[e], c.v[e]), __fmul_rn(a[e], s.v[e])));
      }
      if constexpr (kInterleaved && V == 1) {
        head[2 * i0] = na[0];
        head[2 * i0 + 1] = nb[0];
      } else if constexpr (kInterleaved) {
        Pack<T, 2 * V> v;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          v.v[2 * e] = na[e];
          v.v[2 * e + 1] = nb[e];
        }
        StorePack<T, 2 * V>(v, head + 2 * i0);
      } else {
        Pack<T, V> va;
        Pack<T, V> vb;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          va.v[e] = na[e];
          vb.v[e] = nb[e];
        }
        StorePack<T, V>(va, head + i0);
        StorePack<T, V>(vb, head + i0 + half);
      }
    }
  }
}

template <typename T, bool kInterleaved, int V>
absl::Status LaunchRopeKernel(const RopeArgs& args, uint64_t* error, cudaStream_t stream) {
  const int64_t half = args.rotary_dim / 2;
  const int64_t items = args.heads * (half / V);
  const int threads = kernel_util::ThreadsFor(items);
  const dim3 grid(static_cast<unsigned>(
                      std::min<int64_t>((items + threads - 1) / threads, kernel_util::kMaxBlocks)),
                  static_cast<unsigned>(std::min<int64_t>(args.rows, kernel_util::kMaxGridY)));
  RopeKernel<T, kInterleaved, V><<<grid, threads, 0, stream>>>(
      static_cast<T*>(args.x), args.ld, args.rows, args.heads, args.head_dim, half, args.positions,
      args.cos, args.sin, reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// Whether V pairs per thread suit the layout: every vector a thread touches must be aligned.
template <typename T>
bool RopeFits(const RopeArgs& args, int v) {
  const int64_t half = args.rotary_dim / 2;
  const int64_t x_elems = args.style == RopeStyle::kInterleaved ? 2 * v : v;
  if (x_elems * static_cast<int64_t>(sizeof(T)) > 16) return false;
  return half % v == 0 && kernel_util::Aligned(args.cos, v * sizeof(float)) &&
         kernel_util::Aligned(args.sin, v * sizeof(float)) &&
         kernel_util::Aligned(args.x, x_elems * sizeof(T)) && args.ld % x_elems == 0 &&
         args.head_dim % x_elems == 0;
}

template <typename T, bool kInterleaved>
absl::Status RopeAs(const RopeArgs& args, uint64_t* error, cudaStream_t stream) {
  if (RopeFits<T>(args, 4)) return LaunchRopeKernel<T, kInterleaved, 4>(args, error, stream);
  if (RopeFits<T>(args, 2)) return LaunchRopeKernel<T, kInterleaved, 2>(args, error, stream);
  return LaunchRopeKernel<T, kInterleaved, 1>(args, error, stream);
}

}  // namespace

absl::Status LaunchRmsNorm(const RmsNormArgs& args, cudaStream_t stream) {
  if (args.rows <= 0 || args.cols <= 0) return absl::OkStatus();
  return args.dtype == DType::kF32 ? RmsNormAs<float>(args, stream) : RmsNormAs<bf16>(args, stream);
}

absl::Status LaunchRope(const RopeArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) return absl::InvalidArgumentError("rope (cuda): error is null");
  // Resets the error words even when there is nothing to check.
  MOE_RETURN_IF_ERROR(kernel_util::EnqueueIndexCheck(args.positions, args.rows, 1,
                                                     args.max_positions, error, stream));
  if (args.rows <= 0 || args.heads <= 0) return absl::OkStatus();
  const bool interleaved = args.style == RopeStyle::kInterleaved;
  if (args.dtype == DType::kF32) {
    return interleaved ? RopeAs<float, true>(args, error, stream)
                       : RopeAs<float, false>(args, error, stream);
  }
  return interleaved ? RopeAs<bf16, true>(args, error, stream)
                     : RopeAs<bf16, false>(args, error, stream);
}

absl::Status RopeDataError(const RopeArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kernel_util::kNoError) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("rope: positions[", host_error[0], "]=", static_cast<int64_t>(host_error[1]),
                   " is outside [0, max_positions=", args.max_positions, ")"));
}

absl::Status FinishRope(const RopeArgs& args, const uint64_t* error, cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return RopeDataError(args, host);
}

}  // namespace moe::cuda
