// The CPU backend: oneDNN matmul for every GEMM (bf16 through AMX / AVX-512-BF16 where the
// CPU has them), own OpenMP-parallel code for the rest. The reference backend, and what CI runs.
#ifndef MOE_KERNELS_CPU_CPU_BACKEND_H_
#define MOE_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace moe {

class OneDnnMatmulCache;

struct CpuBackendOptions {
  // Threads for oneDNN and the own kernels; 0 = OpenMP's default (all cores).
  int num_threads = 0;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options = {});
  ~CpuBackend() override;

  Device device() const override { return Device::Cpu(); }
  std::string Describe() const override;

  absl::StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  absl::Status CopyFromHost(void* dst, const void* host_src, size_t bytes) override;
  absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  // For each thread that Sample uses (at most rows, and at most num_threads()): vocab doubles
  // twice and vocab int32s, each 64-byte aligned; plus 63 bytes to align an unaligned workspace.
  size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) const override;

  int num_threads() const { return num_threads_; }

 protected:
  absl::StatusOr<std::unique_ptr<PackedWeights>> RunPackWeights(
      const PackWeightsArgs& args) override;
  absl::Status RunRepackWeights(PackedWeights* packed, int64_t index, const void* b,
                                int64_t ldb) override;
  absl::Status RunUnpackWeights(const PackedWeights& packed, int64_t index, void* b,
                                int64_t ldb) override;
  absl::Status RunGemm(const GemmArgs& args) override;
  absl::Status RunBatchedGemm(const BatchedGemmArgs& args) override;
  absl::Status RunGroupedGemm(const GroupedGemmArgs& args) override;
  absl::Status RunRouter(const RouterArgs& args) override;
  absl::Status RunBincount(const BincountArgs& args) override;
  absl::Status RunExpertOrder(const ExpertOrderArgs& args) override;
  absl::Status RunGatherRows(const GatherRowsArgs& args) override;
  absl::Status RunSwiGlu(const SwiGluArgs& args) override;
  absl::Status RunCombine(const CombineArgs& args) override;
  absl::Status RunScaleRows(const ScaleRowsArgs& args) override;
  absl::Status RunAdd(const AddArgs& args) override;
  absl::Status RunCast(const CastArgs& args) override;
  absl::Status RunRmsNorm(const RmsNormArgs& args) override;
  absl::Status RunRope(const RopeArgs& args) override;
  absl::Status RunEmbedding(const EmbeddingArgs& args) override;
  absl::Status RunKvWrite(const KvWriteArgs& args) override;
  absl::Status RunAttention(const AttentionArgs& args) override;
  absl::Status RunSample(const SampleArgs& args) override;

 private:
  int num_threads_;
  std::unique_ptr<OneDnnMatmulCache> matmuls_;
};

}  // namespace moe

#endif  // MOE_KERNELS_CPU_CPU_BACKEND_H_
