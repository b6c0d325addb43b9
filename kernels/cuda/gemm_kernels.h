// Element-moving and rounding kernels that the cuBLASLt GEMMs need around the library call:
// the transposes that pack and unpack weights, and the one rounding of an fp32 result to bf16
// (cuBLASLt has no f32 x f32 -> bf16 matmul).
#ifndef MOE_KERNELS_CUDA_GEMM_KERNELS_H_
#define MOE_KERNELS_CUDA_GEMM_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace moe::cuda {

// For each of `batch` matrices i: dst_i[c * ld_dst + r] = src_i[r * ld_src + c] for r in
// [0, rows), c in [0, cols), where src_i = src + i * stride_src and dst_i = dst + i * stride_dst
// elements (stride_src = 0 repeats one source). Elements are moved as raw bits of
// `element_size` bytes (2 or 4), so the copy is exact (NaN payloads included); nothing outside
// the rows x cols (resp. cols x rows) elements is written. Device memory; enqueued on `stream`.
// InvalidArgument for negative sizes or an element size other than 2 or 4; a CUDA error's
// Status otherwise.
absl::Status LaunchTransposeMatrices(const void* src, int64_t ld_src, int64_t stride_src,
                                     void* dst, int64_t ld_dst, int64_t stride_dst, int64_t rows,
                                     int64_t cols, int64_t batch, int64_t element_size,
                                     cudaStream_t stream);

// For each of `batch` matrices: dst[r * ld_dst + c] = bf16(src[r * ld_src + c]), rounded to
// nearest even exactly as moe::FloatToBf16 (NaN stays a quiet NaN with the same top bits).
// src is fp32, dst is bf16 (uint16 bits); strides in elements. Same Status rules as above.
absl::Status LaunchRoundF32ToBf16(const float* src, int64_t ld_src, int64_t stride_src,
                                  void* dst, int64_t ld_dst, int64_t stride_dst, int64_t rows,
                                  int64_t cols, int64_t batch, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_GEMM_KERNELS_H_
