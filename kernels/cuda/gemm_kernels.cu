#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_kernels.h"

namespace moe::cuda {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;
// gridDim.y and gridDim.z are limited to 65535; larger extents are covered by loops.
constexpr int64_t kMaxGridYZ = 65535;

// One 32 x 32 tile per block through shared memory, so both the reads and the writes are
// coalesced. Rows of tiles beyond gridDim.y are covered by the loop over tile_row.
template <typename T>
__global__ void __launch_bounds__(kTile* kRowsPerPass)
    TransposeKernel(const T* __restrict__ src, int64_t ld_src, int64_t stride_src,
                    T* __restrict__ dst, int64_t ld_dst, int64_t stride_dst, int64_t rows,
                    int64_t cols) {
  __shared__ T tile[kTile][kTile + 1];
  const int64_t matrix = blockIdx.z;
  src += matrix * stride_src;
  dst += matrix * stride_dst;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.y) * kTile) {
    for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
      const int64_t r = r0 + i;
      const int64_t c = c0 + threadIdx.x;
      if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * ld_src + c];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
      const int64_t c = c0 + i;
      const int64_t r = r0 + threadIdx.x;
      if (r < rows && c < cols) dst[c * ld_dst + r] = tile[threadIdx.x][i];
    }
    __syncthreads();
  }
}

// The bits of moe::FloatToBf16 (kernels/dtype.h), so GPU and CPU round alike.
__device__ __forceinline__ uint16_t RoundToBf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__global__ void RoundKernel(const float* __restrict__ src, int64_t ld_src, int64_t stride_src,
                            uint16_t* __restrict__ dst, int64_t ld_dst, int64_t stride_dst,
                            int64_t rows, int64_t cols) {
  const int64_t matrix = blockIdx.z;
  src += matrix * stride_src;
  dst += matrix * stride_dst;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      dst[r * ld_dst + c] = RoundToBf16Bits(src[r * ld_src + c]);
    }
  }
}

absl::Status CheckSizes(const char* op, int64_t rows, int64_t cols, int64_t batch) {
  if (rows < 0 || cols < 0 || batch < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": rows=", rows, " cols=", cols,
                                                   " batch=", batch, " must not be negative"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Transpose(const void* src, int64_t ld_src, int64_t stride_src, void* dst,
                       int64_t ld_dst, int64_t stride_dst, int64_t rows, int64_t cols,
                       int64_t batch, cudaStream_t stream) {
  const dim3 block(kTile, kRowsPerPass);
  const unsigned grid_x = static_cast<unsigned>((cols + kTile - 1) / kTile);
  const unsigned grid_y =
      static_cast<unsigned>(std::min<int64_t>((rows + kTile - 1) / kTile, kMaxGridYZ));
  for (int64_t first = 0; first < batch; first += kMaxGridYZ) {
    const unsigned grid_z = static_cast<unsigned>(std::min<int64_t>(batch - first, kMaxGridYZ));
    TransposeKernel<T><<<dim3(grid_x, grid_y, grid_z), block, 0, stream>>>(
        static_cast<const T*>(src) + first * stride_src, ld_src, stride_src,
        static_cast<T*>(dst) + first * stride_dst, ld_dst, stride_dst, rows, cols);
    MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchTransposeMatrices(const void* src, int64_t ld_src, int64_t stride_src,
                                     void* dst, int64_t ld_dst, int64_t stride_dst, int64_t rows,
                                     int64_t cols, int64_t batch, int64_t element_size,
                                     cudaStream_t stream) {
  constexpr const char* kOp = "transpose_matrices (cuda)";
  if (absl::Status s = CheckSizes(kOp, rows, cols, batch); !s.ok()) return s;
  if (rows == 0 || cols == 0 || batch == 0) return absl::OkStatus();
  switch (element_size) {
    case 2:
      return Transpose<uint16_t>(src, ld_src, stride_src, dst, ld_dst, stride_dst, rows, cols,
                                 batch, stream);
    case 4:
      return Transpose<uint32_t>(src, ld_src, stride_src, dst, ld_dst, stride_dst, rows, cols,
                                 batch, stream);
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": element_size=", element_size, " (supported: 2, 4)"));
  }
}

absl::Status LaunchRoundF32ToBf16(const float* src, int64_t ld_src, int64_t stride_src,
                                  void* dst, int64_t ld_dst, int64_t stride_dst, int64_t rows,
                                  int64_t cols, int64_t batch, cudaStream_t stream) {
  if (absl::Status s = CheckSizes("round_f32_to_bf16 (cuda)", rows, cols, batch); !s.ok()) {
    return s;
  }
  if (rows == 0 || cols == 0 || batch == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned grid_x = static_cast<unsigned>(std::min<int64_t>((cols + kThreads - 1) / kThreads, 64));
  const unsigned grid_y = static_cast<unsigned>(std::min<int64_t>(rows, kMaxGridYZ));
  for (int64_t first = 0; first < batch; first += kMaxGridYZ) {
    const unsigned grid_z = static_cast<unsigned>(std::min<int64_t>(batch - first, kMaxGridYZ));
    RoundKernel<<<dim3(grid_x, grid_y, grid_z), kThreads, 0, stream>>>(
        src + first * stride_src, ld_src, stride_src,
        static_cast<uint16_t*>(dst) + first * stride_dst, ld_dst, stride_dst, rows, cols);
    MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace moe::cuda
