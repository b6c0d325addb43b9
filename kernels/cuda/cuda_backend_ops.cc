// The ops of the CUDA backend, one line each. An op either runs its launcher from
// kernels/cuda/<file>.h on the backend's stream, as
//   return OnDevice([&] { return cuda::LaunchAdd(a, stream_); });
// or returns NotBuilt("<op>") (Unimplemented "<op>: not built for cuda yet"). The "wire:" note
// on a NotBuilt line names the launcher and header meant to replace it; wiring one is that line,
// its #include, and its target in :cuda_backend's deps (kernels/cuda/BUILD). Launchers that
// find data errors on the device take op_error_ and report through their Finish<Op>:
//   return OnDevice([&] {
//     MOE_RETURN_IF_ERROR(cuda::LaunchRope(a, op_error_, stream_));
//     return cuda::FinishRope(a, op_error_, stream_);
//   });
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/bincount.h"
#include "kernels/cuda/combine.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_packed_weights.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/expert_order.h"
#include "kernels/cuda/norm_rope.h"
#include "kernels/cuda/rows.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/sample.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// The CPU backend's message for the first id outside [0, num_bins) (kernels/cpu/bincount.cc),
// found by reading the ids back: only on this error path.
absl::Status FirstBadBincountId(Backend& backend, const BincountArgs& a) {
  std::vector<int32_t> ids(static_cast<size_t>(a.n));
  MOE_RETURN_IF_ERROR(backend.CopyToHost(ids.data(), a.ids, ids.size() * sizeof(int32_t)));
  for (int64_t i = 0; i < a.n; ++i) {
    if (ids[i] < 0 || ids[i] >= a.num_bins) {
      return absl::InvalidArgumentError(absl::StrCat("bincount: ids[", i, "]=", ids[i],
                                                     " is outside [0, num_bins=", a.num_bins, ")"));
    }
  }
  return absl::InternalError("bincount (cuda): the kernel counted invalid ids, none found on read");
}

}  // namespace

absl::StatusOr<std::unique_ptr<PackedWeights>> CudaBackend::RunPackWeights(
    const PackWeightsArgs& a) {
  MOE_RETURN_IF_ERROR(UseDevice());
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaPackedWeights> packed,
                       cuda::CudaPackedWeights::Create(this, a, stream_));
  return std::unique_ptr<PackedWeights>(std::move(packed));
}
// Backend::RepackWeights / UnpackWeights check that `packed` was made by this backend.
absl::Status CudaBackend::RunRepackWeights(PackedWeights* packed, int64_t index, const void* b,
                                           int64_t ldb) {
  return OnDevice([&] {
    return static_cast<cuda::CudaPackedWeights*>(packed)->Pack(index, b, ldb, stream_);
  });
}
absl::Status CudaBackend::RunUnpackWeights(const PackedWeights& packed, int64_t index, void* b,
                                           int64_t ldb) {
  return OnDevice([&] {
    return static_cast<const cuda::CudaPackedWeights&>(packed).Unpack(index, b, ldb, stream_);
  });
}
absl::Status CudaBackend::RunGemm(const GemmArgs& a) {
  MOE_ASSIGN_OR_RETURN(cuda::CublasLtGemm * gemm, Gemms());
  return gemm->Gemm(a, stream_);
}
absl::Status CudaBackend::RunBatchedGemm(const BatchedGemmArgs& a) {
  MOE_ASSIGN_OR_RETURN(cuda::CublasLtGemm * gemm, Gemms());
  return gemm->BatchedGemm(a, stream_);
}
absl::Status CudaBackend::RunGroupedGemm(const GroupedGemmArgs& a) {
  MOE_ASSIGN_OR_RETURN(cuda::CublasLtGemm * gemm, Gemms());
  return gemm->GroupedGemm(a, stream_);
}
absl::Status CudaBackend::RunRouter(const RouterArgs& a) {
  return OnDevice([&] { return cuda::LaunchRouter(a, stream_); });
}

// The kernel counts ids outside [0, num_bins) on the device; reporting them as the CPU backend
// does needs that count on the host, so this op synchronizes.
absl::Status CudaBackend::RunBincount(const BincountArgs& a) {
  MOE_RETURN_IF_ERROR(OnDevice([&] { return cuda::LaunchBincount(a, op_error_, stream_); }));
  uint64_t invalid = 0;
  MOE_RETURN_IF_ERROR(CopyToHost(&invalid, op_error_, sizeof(invalid)));
  return invalid == 0 ? absl::OkStatus() : FirstBadBincountId(*this, a);
}

// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunExpertOrder(const ExpertOrderArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchExpertOrder(a, op_error_, stream_));
    return cuda::FinishExpertOrder(a, op_error_, stream_);
  });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunGatherRows(const GatherRowsArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchGatherRows(a, op_error_, stream_));
    return cuda::FinishGatherRows(a, op_error_, stream_);
  });
}
absl::Status CudaBackend::RunSwiGlu(const SwiGluArgs& a) {
  return OnDevice([&] { return cuda::LaunchSwiGlu(a, stream_); });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunCombine(const CombineArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchCombine(a, op_error_, stream_));
    return cuda::FinishCombine(a, op_error_, stream_);
  });
}
absl::Status CudaBackend::RunScaleRows(const ScaleRowsArgs& a) {
  return OnDevice([&] { return cuda::LaunchScaleRows(a, stream_); });
}
absl::Status CudaBackend::RunAdd(const AddArgs& a) {
  return OnDevice([&] { return cuda::LaunchAdd(a, stream_); });
}
absl::Status CudaBackend::RunCast(const CastArgs& a) {
  return OnDevice([&] { return cuda::LaunchCast(a, stream_); });
}
absl::Status CudaBackend::RunRmsNorm(const RmsNormArgs& a) {
  return OnDevice([&] { return cuda::LaunchRmsNorm(a, stream_); });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunRope(const RopeArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchRope(a, op_error_, stream_));
    return cuda::FinishRope(a, op_error_, stream_);
  });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunEmbedding(const EmbeddingArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchEmbedding(a, op_error_, stream_));
    return cuda::FinishEmbedding(a, op_error_, stream_);
  });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunKvWrite(const KvWriteArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchKvWrite(a, op_error_, stream_));
    return cuda::FinishKvWrite(a, op_error_, stream_);
  });
}
// Data errors are found on the device; reporting them before returning synchronizes.
absl::Status CudaBackend::RunAttention(const AttentionArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchAttention(a, op_error_, stream_));
    return cuda::FinishAttention(a, op_error_, stream_);
  });
}
absl::Status CudaBackend::RunSample(const SampleArgs& a) {
  return OnDevice([&] {
    MOE_RETURN_IF_ERROR(cuda::LaunchSample(a, op_error_, stream_));
    return cuda::FinishSample(a, op_error_, stream_);
  });
}

}  // namespace moe
