// Flat ops (Add, Cast) are grid-stride loops over N-element vectors plus a scalar tail; row
// ops (ScaleRows, SwiGlu) put rows on grid y and a row's vectors on grid x. Every fp32
// operation is a _rn intrinsic, so nvcc cannot contract a multiply and an add into an fma.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/kernel_util.h"

namespace moe::cuda {
namespace {

using kernel_util::FromF32;
using kernel_util::LoadPack;
using kernel_util::Pack;
using kernel_util::StorePack;
using kernel_util::ToF32;

// ---- Add ---------------------------------------------------------------------------------

template <typename T, int N>
__global__ void AddKernel(const T* a, const T* b, T* out, int64_t n) {
  const int64_t nvec = n / N;
  const int64_t items = nvec + (n - nvec * N);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
       k += stride) {
    if (k < nvec) {
      const Pack<T, N> pa = LoadPack<T, N>(a + k * N);
      const Pack<T, N> pb = LoadPack<T, N>(b + k * N);
      Pack<T, N> po;
#pragma unroll
      for (int e = 0; e < N; ++e) po.v[e] = FromF32<T>(__fadd_rn(ToF32(pa.v[e]), ToF32(pb.v[e])));
      StorePack<T, N>(po, out + k * N);
    } else {
      const int64_t i = nvec * N + (k - nvec);
      out[i] = FromF32<T>(__fadd_rn(ToF32(a[i]), ToF32(b[i])));
    }
  }
}

template <typename T>
absl::Status AddAs(const AddArgs& args, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<T>;
  const auto* a = static_cast<const T*>(args.a);
  const auto* b = static_cast<const T*>(args.b);
  auto* out = static_cast<T*>(args.out);
  constexpr int kThreads = 256;
  const bool vec =
      kernel_util::Aligned(a, 16) && kernel_util::Aligned(b, 16) && kernel_util::Aligned(out, 16);
  if (vec) {
    AddKernel<T, kN><<<kernel_util::BlocksFor(args.n / kN + kN, kThreads), kThreads, 0, stream>>>(
        a, b, out, args.n);
  } else {
    AddKernel<T, 1>
        <<<kernel_util::BlocksFor(args.n, kThreads), kThreads, 0, stream>>>(a, b, out, args.n);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// ---- Cast --------------------------------------------------------------------------------

template <typename S, typename D, int N>
__global__ void CastKernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  const int64_t nvec = n / N;
  const int64_t items = nvec + (n - nvec * N);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
       k += stride) {
    if (k < nvec) {
      const Pack<S, N> ps = LoadPack<S, N>(src + k * N);
      Pack<D, N> pd;
#pragma unroll
      for (int e = 0; e < N; ++e) pd.v[e] = FromF32<D>(ToF32(ps.v[e]));
      StorePack<D, N>(pd, dst + k * N);
    } else {
      const int64_t i = nvec * N + (k - nvec);
      dst[i] = FromF32<D>(ToF32(src[i]));
    }
  }
}

template <typename S, typename D>
absl::Status CastAs(const CastArgs& args, cudaStream_t stream) {
  // One 16-byte vector of the wider type per thread.
  constexpr int kN = kernel_util::kVec16<S> < kernel_util::kVec16<D> ? kernel_util::kVec16<S>
                                                                     : kernel_util::kVec16<D>;
  const auto* src = static_cast<const S*>(args.src);
  auto* dst = static_cast<D*>(args.dst);
  constexpr int kThreads = 256;
  if (kernel_util::Aligned(src, kN * sizeof(S)) && kernel_util::Aligned(dst, kN * sizeof(D))) {
    CastKernel<S, D, kN>
        <<<kernel_util::BlocksFor(args.n / kN + kN, kThreads), kThreads, 0, stream>>>(src, dst,
                                                                                      args.n);
  } else {
    CastKernel<S, D, 1>
        <<<kernel_util::BlocksFor(args.n, kThreads), kThreads, 0, stream>>>(src, dst, args.n);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename S>
absl::Status CastFrom(const CastArgs& args, cudaStream_t stream) {
  switch (args.dst_dtype) {
    case DType::kF32:
      return CastAs<S, float>(args, stream);
    case DType::kBF16:
      return CastAs<S, bf16>(args, stream);
    default:  // f16: Backend admits f32, bf16 and f16 only.
      return CastAs<S, f16>(args, stream);
  }
}

// ---- Row ops -----------------------------------------------------------------------------

// Grid for `rows` rows of `items` work items each (grid-stride loops cover the rest).
struct RowGrid {
  dim3 grid;
  dim3 block;
};

RowGrid RowGridFor(int64_t rows, int64_t items) {
  const int threads = kernel_util::ThreadsFor(items);
  const int64_t gx = std::min<int64_t>((items + threads - 1) / threads, kernel_util::kMaxBlocks);
  const int64_t gy = std::min<int64_t>(rows, kernel_util::kMaxGridY);
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)),
          dim3(static_cast<unsigned>(threads))};
}

template <typename T, int N>
__global__ void ScaleRowsKernel(const T* src, int64_t src_ld, const float* __restrict__ scale,
                                bool sigmoid, T* dst, int64_t dst_ld, int64_t rows, int64_t cols) {
  const int64_t nvec = cols / N;
  const int64_t items = nvec + (cols - nvec * N);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float s = sigmoid ? kernel_util::SigmoidF(scale[r]) : scale[r];
    const T* in = src + r * src_ld;
    T* out = dst + r * dst_ld;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
         k += stride) {
      if (k < nvec) {
        const Pack<T, N> p = LoadPack<T, N>(in + k * N);
        Pack<T, N> o;
#pragma unroll
        for (int e = 0; e < N; ++e) o.v[e] = FromF32<T>(__fmul_rn(ToF32(p.v[e]), s));
        StorePack<T, N>(o, out + k * N);
      } else {
        const int64_t j = nvec * N + (k - nvec);
        out[j] = FromF32<T>(__fmul_rn(ToF32(in[j]), s));
      }
    }
  }
}

template <typename T>
absl::Status ScaleRowsAs(const ScaleRowsArgs& args, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<T>;
  const auto* src = static_cast<const T*>(args.src);
  auto* dst = static_cast<T*>(args.dst);
  const bool vec = kernel_util::Aligned(src, 16) && kernel_util::Aligned(dst, 16) &&
                   args.src_ld % kN == 0 && args.dst_ld % kN == 0;
  if (vec) {
    const RowGrid g = RowGridFor(args.rows, args.cols / kN + args.cols % kN);
    ScaleRowsKernel<T, kN><<<g.grid, g.block, 0, stream>>>(src, args.src_ld, args.scale,
                                                           args.sigmoid_of_scale, dst, args.dst_ld,
                                                           args.rows, args.cols);
  } else {
    const RowGrid g = RowGridFor(args.rows, args.cols);
    ScaleRowsKernel<T, 1><<<g.grid, g.block, 0, stream>>>(src, args.src_ld, args.scale,
                                                          args.sigmoid_of_scale, dst, args.dst_ld,
                                                          args.rows, args.cols);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

__device__ __forceinline__ float SwiGluValue(float g, float u) {
  return __fmul_rn(kernel_util::SiluF(g), u);
}
// PyTorch's bf16 `silu(gate) * up`: silu rounds to bf16 before the product.
__device__ __forceinline__ float SwiGluValue(bf16 g, bf16 u) {
  const float s = ToF32(FromF32<bf16>(kernel_util::SiluF(ToF32(g))));
  return __fmul_rn(s, ToF32(u));
}

template <typename T, int N>
__global__ void SwiGluKernel(const T* __restrict__ gate_up, int64_t gate_up_ld, T* __restrict__ out,
                             int64_t out_ld, int64_t rows, int64_t inter) {
  const int64_t nvec = inter / N;
  const int64_t items = nvec + (inter - nvec * N);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* gate = gate_up + r * gate_up_ld;
    const T* up = gate + inter;
    T* o = out + r * out_ld;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
         k += stride) {
      if (k < nvec) {
        const Pack<T, N> pg = LoadPack<T, N>(gate + k * N);
        const Pack<T, N> pu = LoadPack<T, N>(up + k * N);
        Pack<T, N> po;
#pragma unroll
        for (int e = 0; e < N; ++e) po.v[e] = FromF32<T>(SwiGluValue(pg.v[e], pu.v[e]));
        StorePack<T, N>(po, o + k * N);
      } else {
        const int64_t j = nvec * N + (k - nvec);
        o[j] = FromF32<T>(SwiGluValue(gate[j], up[j]));
      }
    }
  }
}

template <typename T>
absl::Status SwiGluAs(const SwiGluArgs& args, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<T>;
  const auto* in = static_cast<const T*>(args.gate_up);
  auto* out = static_cast<T*>(args.out);
  const bool vec = kernel_util::Aligned(in, 16) && kernel_util::Aligned(out, 16) &&
                   args.gate_up_ld % kN == 0 && args.out_ld % kN == 0 && args.inter % kN == 0;
  if (vec) {
    const RowGrid g = RowGridFor(args.rows, args.inter / kN);
    SwiGluKernel<T, kN><<<g.grid, g.block, 0, stream>>>(in, args.gate_up_ld, out, args.out_ld,
                                                        args.rows, args.inter);
  } else {
    const RowGrid g = RowGridFor(args.rows, args.inter);
    SwiGluKernel<T, 1><<<g.grid, g.block, 0, stream>>>(in, args.gate_up_ld, out, args.out_ld,
                                                       args.rows, args.inter);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchAdd(const AddArgs& args, cudaStream_t stream) {
  if (args.n <= 0) return absl::OkStatus();
  return args.dtype == DType::kF32 ? AddAs<float>(args, stream) : AddAs<bf16>(args, stream);
}

absl::Status LaunchCast(const CastArgs& args, cudaStream_t stream) {
  if (args.n <= 0) return absl::OkStatus();
  if (args.src_dtype == args.dst_dtype) {
    if (args.src == args.dst) return absl::OkStatus();
    MOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(args.dst, args.src, static_cast<size_t>(args.n) * DTypeSize(args.src_dtype),
                        cudaMemcpyDeviceToDevice, stream));
    return absl::OkStatus();
  }
  switch (args.src_dtype) {
    case DType::kF32:
      return CastFrom<float>(args, stream);
    case DType::kBF16:
      return CastFrom<bf16>(args, stream);
    default:
      return CastFrom<f16>(args, stream);
  }
}

absl::Status LaunchScaleRows(const ScaleRowsArgs& args, cudaStream_t stream) {
  if (args.rows <= 0 || args.cols <= 0) return absl::OkStatus();
  return args.dtype == DType::kF32 ? ScaleRowsAs<float>(args, stream)
                                   : ScaleRowsAs<bf16>(args, stream);
}

absl::Status LaunchSwiGlu(const SwiGluArgs& args, cudaStream_t stream) {
  if (args.rows <= 0 || args.inter <= 0) return absl::OkStatus();
  return args.dtype == DType::kF32 ? SwiGluAs<float>(args, stream) : SwiGluAs<bf16>(args, stream);
}

}  // namespace moe::cuda
