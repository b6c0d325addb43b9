#include "kernels/cuda/cuda_packed_weights.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_kernels.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

constexpr int64_t kRowAlignBytes = 16;
constexpr int64_t kMatrixAlignBytes = 256;

int64_t RoundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

std::string Describe(const PackedWeights& p) {
  return absl::StrCat("batch=", p.batch(), " k=", p.k(), " n=", p.n(), " ", DTypeName(p.dtype()),
                      " trans_b=", p.trans_b());
}

// Copies `batch` matrices between a plain layout and the packed [n, k] one. `plain` holds
// [k, n] (transpose needed) or [n, k] (a strided copy) with leading dim ldb, matrices
// stride_plain apart; `to_packed` says the direction.
absl::Status Move(const CudaPackedWeights& p, int64_t first, int64_t count, const void* plain,
                  int64_t ldb, int64_t stride_plain, bool to_packed, cudaStream_t stream) {
  const int64_t size = DTypeSize(p.dtype());
  const void* packed = p.matrix(first);
  if (p.trans_b()) {
    for (int64_t i = 0; i < count; ++i) {
      const char* plain_i = static_cast<const char*>(plain) + i * stride_plain * size;
      const char* packed_i = static_cast<const char*>(packed) + i * p.matrix_stride() * size;
      if (to_packed) {
        MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
            const_cast<char*>(packed_i), p.ld() * size, plain_i, ldb * size, p.k() * size, p.n(),
            cudaMemcpyDeviceToDevice, stream));
      } else {
        MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(const_cast<char*>(plain_i), ldb * size,
                                                   packed_i, p.ld() * size, p.k() * size, p.n(),
                                                   cudaMemcpyDeviceToDevice, stream));
      }
    }
    return absl::OkStatus();
  }
  if (to_packed) {
    // plain [k, n] -> packed [n, k]
    return LaunchTransposeMatrices(plain, ldb, stride_plain, const_cast<void*>(packed), p.ld(),
                                   p.matrix_stride(), p.k(), p.n(), count, size, stream);
  }
  // packed [n, k] -> plain [k, n]
  return LaunchTransposeMatrices(packed, p.ld(), p.matrix_stride(), const_cast<void*>(plain), ldb,
                                 stride_plain, p.n(), p.k(), count, size, stream);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaPackedWeights>> CudaPackedWeights::Create(
    const Backend* backend, const PackWeightsArgs& args, cudaStream_t stream) {
  std::unique_ptr<CudaPackedWeights> p(
      new CudaPackedWeights(backend, args.batch, args.k, args.n, args.dtype, args.trans_b));
  if (args.batch == 0 || args.k == 0 || args.n == 0) return p;
  const int64_t size = DTypeSize(args.dtype);
  p->ld_ = RoundUp(args.k * size, kRowAlignBytes) / size;
  p->matrix_stride_ = RoundUp(args.n * p->ld_ * size, kMatrixAlignBytes) / size;
  const int64_t matrix_bytes = p->matrix_stride_ * size;
  if (matrix_bytes > std::numeric_limits<int64_t>::max() / args.batch) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda pack_weights ", Describe(*p), ": ",
                                                     args.batch, " x ", matrix_bytes,
                                                     " bytes overflow"));
  }
  const size_t bytes = static_cast<size_t>(args.batch * matrix_bytes);
  if (cudaMalloc(&p->data_, bytes) != cudaSuccess) {
    p->data_ = nullptr;
    cudaGetLastError();  // the failure is reported here, not by the next CUDA call
    return absl::ResourceExhaustedError(absl::StrCat("cuda pack_weights ", Describe(*p),
                                                     ": cannot allocate ", args.batch, " x ",
                                                     matrix_bytes, " bytes of device memory"));
  }
  // Zeros: the padding, and every matrix when there is no source yet.
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p->data_, 0, bytes, stream));
  if (args.b != nullptr) {
    MOE_RETURN_IF_ERROR(Move(*p, 0, args.batch, args.b, args.ldb,
                             args.batch > 1 ? args.stride_b : 0, /*to_packed=*/true, stream));
  }
  return p;
}

CudaPackedWeights::~CudaPackedWeights() {
  if (data_ != nullptr) cudaFree(data_);
}

size_t CudaPackedWeights::bytes() const {
  return data_ == nullptr ? 0
                          : static_cast<size_t>(batch() * matrix_stride_ * DTypeSize(dtype()));
}

absl::Status CudaPackedWeights::Pack(int64_t index, const void* src, int64_t ldb,
                                     cudaStream_t stream) {
  if (data_ == nullptr) return absl::OkStatus();
  return Move(*this, index, 1, src, ldb, 0, /*to_packed=*/true, stream);
}

absl::Status CudaPackedWeights::Unpack(int64_t index, void* dst, int64_t ldb,
                                       cudaStream_t stream) const {
  if (data_ == nullptr) return absl::OkStatus();
  return Move(*this, index, 1, dst, ldb, 0, /*to_packed=*/false, stream);
}

}  // namespace moe::cuda
