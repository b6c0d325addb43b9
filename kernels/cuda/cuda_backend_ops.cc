// The ops of the CUDA backend, one short function each: a launcher from
// kernels/cuda/<file>.h enqueued on the backend's stream, as
//   return OnDevice([&] { return cuda::LaunchAdd(a, stream_); });
// or, for launchers that find data errors on the device, through Checked with the op's
// <Op>DataError as the deferred report (see CudaBackend::Checked).
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

// Bincount, ExpertOrder, GatherRows, Combine, Rope, Embedding, KvWrite and Attention find
// data errors on the device and report them at the next Synchronize / CopyToHost
// (CudaBackend::Checked).

// The kernel counts ids outside [0, num_bins); the report names the first one as the CPU
// backend does by reading the ids back (only on this error path).
absl::Status CudaBackend::RunBincount(const BincountArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchBincount(a, words, stream_); },
                 [this, a](const uint64_t* words) {
                   return words[0] == 0 ? absl::OkStatus() : FirstBadBincountId(*this, a);
                 });
}
absl::Status CudaBackend::RunExpertOrder(const ExpertOrderArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchExpertOrder(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::ExpertOrderDataError(a, words); });
}
absl::Status CudaBackend::RunGatherRows(const GatherRowsArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchGatherRows(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::GatherRowsDataError(a, words); });
}
absl::Status CudaBackend::RunSwiGlu(const SwiGluArgs& a) {
  return OnDevice([&] { return cuda::LaunchSwiGlu(a, stream_); });
}
absl::Status CudaBackend::RunCombine(const CombineArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchCombine(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::CombineDataError(a, words); });
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
absl::Status CudaBackend::RunRope(const RopeArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchRope(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::RopeDataError(a, words); });
}
absl::Status CudaBackend::RunEmbedding(const EmbeddingArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchEmbedding(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::EmbeddingDataError(a, words); });
}
absl::Status CudaBackend::RunKvWrite(const KvWriteArgs& a) {
  return Checked([&](uint64_t* words) { return cuda::LaunchKvWrite(a, words, stream_); },
                 [a](const uint64_t* words) { return cuda::KvWriteDataError(a, words); });
}
absl::Status CudaBackend::RunAttention(const AttentionArgs& a) {
  float* partials = nullptr;
  if (cuda::AttentionPartitionSlots(a) > 1) {
    MOE_ASSIGN_OR_RETURN(partials, AttentionPartials());
  }
  return Checked(
      [&](uint64_t* words) {
        return cuda::LaunchAttention(a, partials, kAttentionPartialFloats, words, stream_);
      },
      [a](const uint64_t* words) { return cuda::AttentionDataError(a, words); });
}
// Sample's results go to the host right after it anyway: it reports at once, with the pending
// errors of the ops before it first.
absl::Status CudaBackend::RunSample(const SampleArgs& a) {
  MOE_RETURN_IF_ERROR(
      Checked([&](uint64_t* words) { return cuda::LaunchSample(a, words, stream_); },
              [a](const uint64_t* words) { return cuda::SampleDataError(a, words); }));
  return CheckDataErrors();
}

}  // namespace moe
