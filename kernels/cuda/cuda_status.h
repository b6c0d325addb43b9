// CUDA runtime errors as absl::Status, naming the failed call and where it was made.
//
//   MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p, 0, bytes, stream));
//
// returns from the enclosing function (which returns absl::Status) with e.g.
//   RESOURCE_EXHAUSTED: cudaMalloc(&p, bytes) failed: cudaErrorMemoryAllocation (out of memory)
//   at kernels/cuda/foo.cu:42
// if the call does not return cudaSuccess. Usable from .cc and .cu files.
#ifndef MOE_KERNELS_CUDA_CUDA_STATUS_H_
#define MOE_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace moe::cuda {

// OK for cudaSuccess; otherwise a Status whose code follows the error (out of memory:
// ResourceExhausted; no device, no or too old a driver: Unavailable; bad device ordinal:
// NotFound; bad argument or launch configuration: InvalidArgument; else Internal) and whose
// message names `call`, the error's name and text, and file:line.
absl::Status CudaStatus(cudaError_t err, const char* call, const char* file, int line);

}  // namespace moe::cuda

#define MOE_CUDA_RETURN_IF_ERROR(expr)                                          \
  do {                                                                          \
    const cudaError_t moe_cuda_err_ = (expr);                                   \
    if (moe_cuda_err_ != cudaSuccess) {                                         \
      return ::moe::cuda::CudaStatus(moe_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                           \
  } while (0)

#endif  // MOE_KERNELS_CUDA_CUDA_STATUS_H_
