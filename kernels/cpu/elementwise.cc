// PLACEHOLDER being written by a helper; replaced before this lands.
#include "kernels/cpu/cpu_backend.h"

namespace moe {
absl::Status CpuBackend::RunScaleRows(const ScaleRowsArgs&) { return absl::UnimplementedError("elementwise: not written yet"); }
absl::Status CpuBackend::RunAdd(const AddArgs&) { return absl::UnimplementedError("elementwise: not written yet"); }
absl::Status CpuBackend::RunCast(const CastArgs&) { return absl::UnimplementedError("elementwise: not written yet"); }
}  // namespace moe
