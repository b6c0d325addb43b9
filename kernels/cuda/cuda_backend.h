// The CUDA backend: one NVIDIA GPU, one stream. Ops are enqueued on the backend's own
// non-blocking stream and run in stream order; every CUDA error becomes a Status naming the
// failed call and file:line (kernels/cuda/cuda_status.h). An op whose kernel is not built yet
// returns Unimplemented "<op>: not built for cuda yet"; nothing falls back to the CPU.
//
// Memory: Allocate / Free are stream-ordered (cudaMallocFromPoolAsync / cudaFreeAsync on the
// backend's stream) from a memory pool the backend owns, whose release threshold keeps freed
// memory cached in the pool, so steady-state allocation makes no driver call that synchronizes
// or maps memory. Memory from Allocate is ready in stream order: ops and copies of this backend
// may use it at once; another stream or the host must Synchronize() first. Free may be called
// while queued work still uses the memory (the pool reuses it only after that work).
//
// Copies (either host pointer may be pageable or pinned memory):
// - CopyFromHost returns once the host buffer may be reused, without waiting for the GPU: the
//   bytes go through the backend's pinned staging buffers (device sources are copied directly).
// - CopyToHost returns once the bytes are on the host (it synchronizes the stream).
// - CopyOnDevice is stream-ordered; like the CPU backend's memmove, src and dst may overlap.
// A null pointer with bytes > 0 is InvalidArgument naming the copy; bytes = 0 does nothing.
//
// Thread safety: one thread at a time (backend.h). Every method makes the backend's device
// current on the calling thread first.
#ifndef MOE_KERNELS_CUDA_CUDA_BACKEND_H_
#define MOE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"
#include "kernels/status_macros.h"

namespace moe {
namespace cuda {
class CublasLtGemm;
}  // namespace cuda

class CudaBackend final : public Backend {
 public:
  // The backend for CUDA device `index`. NotFound naming the device and the number of devices
  // (or cudaGetDeviceCount's error, e.g. no driver) when there is no such device; otherwise the
  // Status of the first failed CUDA call (stream, pool, staging buffers).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int index);

  // Waits for queued work, then releases the stream, the pool and the staging buffers. Memory
  // still allocated from the pool is released with it once its last use completes.
  ~CudaBackend() override;

  Device device() const override { return Device::Cuda(index_); }
  // "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB, CUDA runtime 13.0, driver 13.0)".
  std::string Describe() const override;

  // ResourceExhausted "cuda:0: cannot allocate <bytes> bytes: <free> of <total> bytes free on
  // the device, ..." when the device is out of memory (after trimming the pool and retrying
  // once). A zero-byte request still returns a unique non-null pointer.
  absl::StatusOr<void*> Allocate(size_t bytes) override;
  // Stream-ordered; null is ignored.
  void Free(void* ptr) override;
  absl::Status CopyFromHost(void* dst, const void* host_src, size_t bytes) override;
  absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) override;
  absl::Status Synchronize() override;
  // A CUDA graph of the ops (cuda_graph.cc): stream capture in thread-local mode, so work other
  // threads enqueue elsewhere is unaffected. While recording, Allocate, CopyFromHost from host
  // memory, CopyToHost and Synchronize return FailedPrecondition, and a Free is held back
  // until the capture ends (the capture then fails: replaying a free would free again). The
  // graph's data-error checks are kept with it; each Replay hands them to this backend as if
  // its ops had just been launched (so it first reports the checks still pending).
  absl::StatusOr<std::unique_ptr<OpGraph>> CaptureOps(
      const std::function<absl::Status()>& enqueue) override;
  bool RecordsOpGraphs() const override { return true; }

  // cuda::SampleWorkspaceBytes (kernels/cuda/sample.h): per logit an fp64 z and a 64-bit key
  // and int32 id, both double-buffered for the radix sort (32 bytes); per row the copied params
  // and a few words; 2 MiB for seen-id chunks and sort scratch; 256 bytes to align an unaligned
  // workspace. Non-decreasing in rows and vocab; 0 when either is <= 0.
  size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) const override;

  int index() const { return index_; }
  // The stream every op and copy is enqueued on (for code that interoperates: NCCL, graphs).
  cudaStream_t stream() const { return stream_; }

 protected:
  // Defined in cuda_backend_ops.cc: one line per op.
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
  // Pinned host memory that CopyFromHost stages through; `done` is recorded after the DMA
  // that reads it, so the host waits on it before writing the slot again.
  struct StagingSlot {
    void* host = nullptr;
    cudaEvent_t done = nullptr;
  };
  static constexpr int kStagingSlots = 2;
  static constexpr size_t kStagingSlotBytes = size_t{4} << 20;

  class CudaOpGraph;
  friend class CudaOpGraph;

  explicit CudaBackend(int index);
  absl::Status Init();

  // Makes this backend's device current on the calling thread and clears a stale non-sticky
  // error, so that a launcher's cudaGetLastError() reports only its own launch.
  absl::Status UseDevice() const;
  // Runs a launcher (which enqueues on stream_) on this backend's device.
  template <typename Launch>
  absl::Status OnDevice(Launch&& launch) {
    absl::Status s = UseDevice();
    return s.ok() ? launch() : s;
  }
  // The cuBLASLt GEMM runner, made on first use (its handle and 32 MiB workspace cost nothing
  // for code that never multiplies).
  absl::StatusOr<cuda::CublasLtGemm*> Gemms();
  // The split-KV partials of Attention (kernels/cuda/attention.h), made on first use; a fixed
  // size, so an op graph that recorded them never sees them move. 64 MiB: a decode step of 64
  // tokens x 32 heads x 4096 positions (head_dim 128) in one launch.
  static constexpr int64_t kAttentionPartialFloats = int64_t{16} << 20;
  absl::StatusOr<float*> AttentionPartials();
  // Unimplemented "<op>: not built for cuda yet".
  static absl::Status NotBuilt(absl::string_view op);
  absl::StatusOr<void*> AllocateOnStream(size_t bytes);
  // Requests from this size on are checked against AvailableBytes() before the pool sees them.
  static constexpr size_t kCheckedAllocationBytes = size_t{256} << 20;
  // Free device memory plus what the pool holds unused.
  size_t AvailableBytes() const;
  bool IsOutOfMemory(cudaError_t err, size_t bytes) const;
  absl::Status OutOfMemory(size_t bytes, cudaError_t err);
  absl::Status StageFromHost(char* dst, const char* src, size_t bytes);

  int index_;
  std::string description_;
  size_t total_memory_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  StagingSlot staging_[kStagingSlots];
  int next_slot_ = 0;
  // Data errors found on the device (an index out of range) are not waited for by the op:
  // each checked launch gets its own two error words (LaunchBincount's count of ids outside
  // [0, num_bins) in word 0; the first bad index and its value of rows.h, norm_rope.h,
  // combine.h and attention.h; expert_order.h's coded error and its value) and leaves a report
  // here. CheckDataErrors reads every pending slot in one copy and returns the first failed
  // op's Status, in launch order; Synchronize and CopyToHost call it after their wait, so an
  // error reaches the caller at the next point where it waits for the device anyway, named as
  // the op would have named it (the op wrote nothing, and later ops never read or write out of
  // bounds). A step of the model thus never stops for its checks.
  struct PendingCheck {
    std::function<absl::Status(const uint64_t* words)> report;
  };
  static constexpr int kErrorSlots = 1024;
  // Enqueues launch(words) with the next free slot's words and keeps `report` for it; when all
  // slots are pending, checks them first (a synchronisation).
  template <typename Launch, typename Report>
  absl::Status Checked(Launch&& launch, Report&& report) {
    MOE_RETURN_IF_ERROR(UseDevice());
    if (pending_checks_.size() == static_cast<size_t>(kErrorSlots)) {
      MOE_RETURN_IF_ERROR(CheckDataErrors());
    }
    MOE_RETURN_IF_ERROR(launch(op_error_ + 2 * pending_checks_.size()));
    pending_checks_.push_back({std::forward<Report>(report)});
    return absl::OkStatus();
  }
  // Waits for the stream and reports the first pending data error (OK when none).
  absl::Status CheckDataErrors();
  // FailedPrecondition "cuda:<i>: <what> while recording an op graph" when recording, else OK.
  absl::Status CheckNotRecording(absl::string_view what) const;
  // Enqueues a recorded graph and takes its checks as pending (cuda_graph.cc).
  absl::Status ReplayGraph(cudaGraphExec_t exec, const std::vector<PendingCheck>& checks);
  bool recording_ = false;
  // Frees asked for while recording; made once the capture has ended.
  std::vector<void*> frees_after_capture_;

  uint64_t* op_error_ = nullptr;       // device, 2 * kErrorSlots words
  uint64_t* op_error_host_ = nullptr;  // pinned, 2 * kErrorSlots words
  std::vector<PendingCheck> pending_checks_;
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
  float* attention_partials_ = nullptr;  // device, kAttentionPartialFloats
};

}  // namespace moe

#endif  // MOE_KERNELS_CUDA_CUDA_BACKEND_H_
