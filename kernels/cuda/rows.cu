// Plain copies move raw bits (uint32 / uint16 elements), so NaN payloads survive; the scaled
// gather multiplies with __fmul_rn and rounds once, as the CPU does.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/cuda/rows.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

using kernel_util::FromF32;
using kernel_util::LoadPack;
using kernel_util::Pack;
using kernel_util::StorePack;
using kernel_util::ToF32;

// ---- Embedding / GatherRows --------------------------------------------------------------

// dst[r, :] = src[index[r] / divisor, :] (times scale[index[r]] when kScale). Rows on grid y,
// a row's vectors on grid x. Without kScale, T is a raw unsigned type of the element's size.
template <typename T, int N, bool kScale>
__global__ void GatherKernel(const T* __restrict__ src, int64_t src_ld,
                             const int32_t* __restrict__ index, int64_t divisor,
                             const float* __restrict__ scale, T* __restrict__ dst, int64_t dst_ld,
                             int64_t rows, int64_t cols, unsigned long long* error) {
  if (kernel_util::CheckFailed(index, error)) return;
  const int64_t nvec = cols / N;
  const int64_t items = nvec + (cols - nvec * N);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t idx = index[r];
    const T* in = src + (idx / divisor) * src_ld;
    T* out = dst + r * dst_ld;
    float s = 1.0f;
    if constexpr (kScale) s = scale[idx];
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < items;
         k += stride) {
      if (k < nvec) {
        Pack<T, N> p = LoadPack<T, N>(in + k * N);
        if constexpr (kScale) {
#pragma unroll
          for (int e = 0; e < N; ++e) p.v[e] = FromF32<T>(__fmul_rn(ToF32(p.v[e]), s));
        }
        StorePack<T, N>(p, out + k * N);
      } else {
        const int64_t j = nvec * N + (k - nvec);
        if constexpr (kScale) {
          out[j] = FromF32<T>(__fmul_rn(ToF32(in[j]), s));
        } else {
          out[j] = in[j];
        }
      }
    }
  }
}

struct GatherParams {
  const void* src;
  int64_t src_ld;
  const int32_t* index;
  int64_t divisor;
  const float* scale;  // null: a plain copy
  void* dst;
  int64_t dst_ld;
  int64_t rows;
  int64_t cols;
};

template <typename T, int N, bool kScale>
absl::Status LaunchGatherKernel(const GatherParams& p, uint64_t* error, cudaStream_t stream) {
  const int64_t items = p.cols / N + p.cols % N;
  const int threads = kernel_util::ThreadsFor(items);
  const dim3 grid(static_cast<unsigned>(
                      std::min<int64_t>((items + threads - 1) / threads, kernel_util::kMaxBlocks)),
                  static_cast<unsigned>(std::min<int64_t>(p.rows, kernel_util::kMaxGridY)));
  GatherKernel<T, N, kScale><<<grid, threads, 0, stream>>>(
      static_cast<const T*>(p.src), p.src_ld, p.index, p.divisor, p.scale, static_cast<T*>(p.dst),
      p.dst_ld, p.rows, p.cols, reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// T: the element type (kScale) or a raw unsigned type of its size (copy).
template <typename T, bool kScale>
absl::Status GatherAs(const GatherParams& p, uint64_t* error, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<T>;
  const bool vec = kernel_util::Aligned(p.src, 16) && kernel_util::Aligned(p.dst, 16) &&
                   p.src_ld % kN == 0 && p.dst_ld % kN == 0;
  return vec ? LaunchGatherKernel<T, kN, kScale>(p, error, stream)
             : LaunchGatherKernel<T, 1, kScale>(p, error, stream);
}

absl::Status Gather(const GatherParams& p, DType dtype, uint64_t* error, cudaStream_t stream) {
  if (p.scale == nullptr) {
    return DTypeSize(dtype) == 4 ? GatherAs<uint32_t, false>(p, error, stream)
                                 : GatherAs<uint16_t, false>(p, error, stream);
  }
  switch (dtype) {
    case DType::kF32:
      return GatherAs<float, true>(p, error, stream);
    case DType::kBF16:
      return GatherAs<bf16, true>(p, error, stream);
    default:  // f16: Backend admits f32, bf16 and f16 only.
      return GatherAs<f16, true>(p, error, stream);
  }
}

// ---- KvWrite -----------------------------------------------------------------------------

constexpr int kKvThreads = 256;
constexpr int kKvMaxTokensPerBlock = 32;

// Block b writes tokens [b * per_block, ...): first it marks those of its tokens whose slot a
// later token names (that token's row wins), then copies the others' K and V rows.
template <typename U, int N>
__global__ void __launch_bounds__(kKvThreads)
    KvWriteKernel(const U* __restrict__ k, int64_t k_ld, const U* __restrict__ v, int64_t v_ld,
                  const int32_t* __restrict__ slot_mapping, int64_t tokens, int per_block,
                  int64_t row, U* __restrict__ k_cache, U* __restrict__ v_cache,
                  unsigned long long* error) {
  if (kernel_util::CheckFailed(slot_mapping, error)) return;
  __shared__ int32_t slot[kKvMaxTokensPerBlock];
  __shared__ int superseded[kKvMaxTokensPerBlock];
  const int tid = threadIdx.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * per_block;
  const int count = static_cast<int>(min(static_cast<int64_t>(per_block), tokens - t0));
  if (tid < count) {
    slot[tid] = slot_mapping[t0 + tid];
    superseded[tid] = 0;
  }
  __syncthreads();
  for (int64_t u = t0 + 1 + tid; u < tokens; u += kKvThreads) {
    const int32_t su = slot_mapping[u];
    for (int i = 0; i < count && t0 + i < u; ++i) {
      if (slot[i] == su) superseded[i] = 1;
    }
  }
  __syncthreads();
  const int64_t nvec = row / N;
  const int64_t items = nvec + (row - nvec * N);
  for (int64_t m = tid; m < count * items; m += kKvThreads) {
    const int i = static_cast<int>(m / items);
    if (superseded[i]) continue;
    const int64_t q = m - i * items;
    const int64_t t = t0 + i;
    const U* ks = k + t * k_ld;
    const U* vs = v + t * v_ld;
    U* kd = k_cache + static_cast<int64_t>(slot[i]) * row;
    U* vd = v_cache + static_cast<int64_t>(slot[i]) * row;
    if (q < nvec) {
      StorePack<U, N>(LoadPack<U, N>(ks + q * N), kd + q * N);
      StorePack<U, N>(LoadPack<U, N>(vs + q * N), vd + q * N);
    } else {
      const int64_t j = nvec * N + (q - nvec);
      kd[j] = ks[j];
      vd[j] = vs[j];
    }
  }
}

template <typename U, int N>
absl::Status LaunchKvWriteKernel(const KvWriteArgs& args, uint64_t* error, cudaStream_t stream) {
  // Enough blocks to spread the copy (one token each up to 1024 tokens), and few enough that
  // the duplicate-slot scan, which each block does over the tokens after its own, stays cheap.
  const int per_block =
      static_cast<int>(std::clamp<int64_t>((args.tokens + 1023) / 1024, 1, kKvMaxTokensPerBlock));
  const int64_t blocks = (args.tokens + per_block - 1) / per_block;
  KvWriteKernel<U, N><<<static_cast<unsigned>(blocks), kKvThreads, 0, stream>>>(
      static_cast<const U*>(args.k), args.k_ld, static_cast<const U*>(args.v), args.v_ld,
      args.slot_mapping, args.tokens, per_block, args.kv_heads * args.head_dim,
      static_cast<U*>(args.k_cache), static_cast<U*>(args.v_cache),
      reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <typename U>
absl::Status KvWriteAs(const KvWriteArgs& args, uint64_t* error, cudaStream_t stream) {
  constexpr int kN = kernel_util::kVec16<U>;
  const int64_t row = args.kv_heads * args.head_dim;
  const bool vec = kernel_util::Aligned(args.k, 16) && kernel_util::Aligned(args.v, 16) &&
                   kernel_util::Aligned(args.k_cache, 16) &&
                   kernel_util::Aligned(args.v_cache, 16) && args.k_ld % kN == 0 &&
                   args.v_ld % kN == 0 && row % kN == 0;
  return vec ? LaunchKvWriteKernel<U, kN>(args, error, stream)
             : LaunchKvWriteKernel<U, 1>(args, error, stream);
}

absl::Status NullError(absl::string_view op) {
  return absl::InvalidArgumentError(absl::StrCat(op, " (cuda): error is null"));
}

}  // namespace

absl::Status LaunchEmbedding(const EmbeddingArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) return NullError("embedding");
  MOE_RETURN_IF_ERROR(
      kernel_util::EnqueueIndexCheck(args.ids, args.tokens, 1, args.vocab, error, stream));
  if (args.tokens <= 0 || args.cols <= 0) return absl::OkStatus();
  const GatherParams p{args.table, args.table_ld, args.ids,    1,        nullptr,
                       args.out,   args.out_ld,   args.tokens, args.cols};
  return Gather(p, args.dtype, error, stream);
}

absl::Status EmbeddingDataError(const EmbeddingArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kernel_util::kNoError) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("embedding: ids[", host_error[0],
                                                 "]=", static_cast<int64_t>(host_error[1]),
                                                 " is outside [0, vocab=", args.vocab, ")"));
}

absl::Status FinishEmbedding(const EmbeddingArgs& args, const uint64_t* error,
                             cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return EmbeddingDataError(args, host);
}

absl::Status LaunchGatherRows(const GatherRowsArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) return NullError("gather_rows");
  MOE_RETURN_IF_ERROR(kernel_util::EnqueueIndexCheck(args.index, args.rows, args.index_divisor,
                                                     args.src_rows, error, stream));
  if (args.rows <= 0 || args.cols <= 0) return absl::OkStatus();
  const GatherParams p{args.src, args.src_ld, args.index, args.index_divisor, args.slot_scale,
                       args.dst, args.dst_ld, args.rows,  args.cols};
  return Gather(p, args.dtype, error, stream);
}

absl::Status GatherRowsDataError(const GatherRowsArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kernel_util::kNoError) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("gather_rows: index[", host_error[0], "]=", static_cast<int64_t>(host_error[1]),
                   " / index_divisor=", args.index_divisor,
                   " is outside the source rows [0, src_rows=", args.src_rows, ")"));
}

absl::Status FinishGatherRows(const GatherRowsArgs& args, const uint64_t* error,
                              cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return GatherRowsDataError(args, host);
}

absl::Status LaunchKvWrite(const KvWriteArgs& args, uint64_t* error, cudaStream_t stream) {
  if (error == nullptr) return NullError("kv_write");
  MOE_RETURN_IF_ERROR(kernel_util::EnqueueIndexCheck(
      args.slot_mapping, args.tokens, 1, args.num_blocks * args.block_size, error, stream));
  if (args.tokens <= 0 || args.kv_heads <= 0 || args.head_dim <= 0) return absl::OkStatus();
  return DTypeSize(args.dtype) == 4 ? KvWriteAs<uint32_t>(args, error, stream)
                                    : KvWriteAs<uint16_t>(args, error, stream);
}

absl::Status KvWriteDataError(const KvWriteArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kernel_util::kNoError) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "kv_write: slot_mapping[", host_error[0], "]=", static_cast<int64_t>(host_error[1]),
      " is outside [0, num_blocks * block_size=", args.num_blocks * args.block_size, ")"));
}

absl::Status FinishKvWrite(const KvWriteArgs& args, const uint64_t* error, cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return KvWriteDataError(args, host);
}

}  // namespace moe::cuda
