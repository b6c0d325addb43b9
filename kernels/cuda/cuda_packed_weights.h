// The CUDA backend's PackedWeights: a device copy of `batch` B matrices, each stored as op(B)
// transposed, i.e. [n, k] row-major ("K-major": the k values of one output column are
// contiguous), whatever layout the source had.
//
// Why [n, k]: in the column-major view cuBLASLt works in (see gemm.h), a row-major
// C[m, n] = A[m, k] * B[k, n] is C^T = B^T * A^T, with the weights as cuBLASLt's first
// operand. Storing them [n, k] makes that call "TN" (first operand transposed, second not):
// both operands are K-major, the layout every cuBLASLt kernel family supports (the only one
// for FP8, so a later FP8 path keeps the layout), and the one the heuristics are tuned on.
// The model's expert weights w13 [E, D, 2I] and w2t [E, I, D] are [k, n] row-major
// (trans_b = false, k = D resp. I), so PackWeights transposes them once at load, and a
// token's GEMM then reads each weight row of k contiguous values.
//
// Rows are padded to ld() elements (16-byte multiples) and matrices to 256-byte multiples
// (matrix_stride()), so every row and matrix is aligned for the 16-byte-aligned kernels;
// the padding is zero and never read as data. Packing and unpacking only move bits.
//
// Thread safety: as PackedWeights. Every method enqueues on the given stream; the caller
// keeps sources alive until the stream reaches the copy, and destroys the handle only when
// no enqueued GEMM still reads it (the destructor's cudaFree waits for the device).
#ifndef MOE_KERNELS_CUDA_CUDA_PACKED_WEIGHTS_H_
#define MOE_KERNELS_CUDA_CUDA_PACKED_WEIGHTS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace moe::cuda {

class CudaPackedWeights final : public PackedWeights {
 public:
  // Allocates the set (zeros) and, when args.b is set, packs every matrix from it (device
  // memory, laid out as PackWeightsArgs says). Arguments are validated by Backend::PackWeights.
  // An empty set (batch, k or n = 0) holds no memory. ResourceExhausted naming the bytes if
  // the device memory cannot be had; a CUDA error's Status otherwise.
  static absl::StatusOr<std::unique_ptr<CudaPackedWeights>> Create(const Backend* backend,
                                                                   const PackWeightsArgs& args,
                                                                   cudaStream_t stream);
  ~CudaPackedWeights() override;

  // Packs matrix `index` from the device matrix `src` ([k, n], or [n, k] when trans_b(),
  // leading dim ldb). Arguments are validated by Backend::RepackWeights.
  absl::Status Pack(int64_t index, const void* src, int64_t ldb, cudaStream_t stream);
  // Writes matrix `index` to the device matrix `dst` in the layout Pack reads, bit for bit;
  // elements between rows (ld padding) are not written.
  absl::Status Unpack(int64_t index, void* dst, int64_t ldb, cudaStream_t stream) const;

  // Matrix `index`: [n, k] row-major with leading dim ld().
  const void* matrix(int64_t index) const {
    return static_cast<const char*>(data_) + index * matrix_stride() * DTypeSize(dtype());
  }
  int64_t ld() const { return ld_; }
  // Elements between the starts of consecutive matrices.
  int64_t matrix_stride() const { return matrix_stride_; }

  size_t bytes() const override;

 private:
  using PackedWeights::PackedWeights;

  void* data_ = nullptr;
  int64_t ld_ = 0;
  int64_t matrix_stride_ = 0;
};

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_CUDA_PACKED_WEIGHTS_H_
