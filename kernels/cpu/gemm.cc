// PLACEHOLDER being written by a helper; replaced before this lands.
#include "kernels/cpu/cpu_backend.h"

namespace moe {
absl::Status CpuBackend::RunGemm(const GemmArgs&) { return absl::UnimplementedError("gemm: not written yet"); }
absl::Status CpuBackend::RunBatchedGemm(const BatchedGemmArgs&) { return absl::UnimplementedError("gemm: not written yet"); }
absl::Status CpuBackend::RunGroupedGemm(const GroupedGemmArgs&) { return absl::UnimplementedError("gemm: not written yet"); }
}  // namespace moe
