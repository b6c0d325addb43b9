// CudaBackend::CaptureOps: ops recorded by stream capture into a CUDA graph, replayed with one
// launch (a decode step of a 48-layer model is about a thousand kernels, each costing the host
// more time to launch than the GPU takes to run it at small batch sizes).
#include <cuda_runtime_api.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/status_macros.h"

namespace moe {

class CudaBackend::CudaOpGraph final : public OpGraph {
 public:
  CudaOpGraph(CudaBackend* backend, cudaGraphExec_t exec, std::vector<PendingCheck> checks)
      : backend_(backend), exec_(exec), checks_(std::move(checks)) {}
  ~CudaOpGraph() override {
    if (backend_->UseDevice().ok()) (void)cudaGraphExecDestroy(exec_);
    (void)cudaGetLastError();
  }
  absl::Status Replay() override { return backend_->ReplayGraph(exec_, checks_); }

 private:
  CudaBackend* backend_;
  cudaGraphExec_t exec_;
  // The data-error checks of the recorded launches; they use error slots [0, size()).
  std::vector<PendingCheck> checks_;
};

absl::Status CudaBackend::CheckNotRecording(absl::string_view what) const {
  if (!recording_) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(Device::Cuda(index_).ToString(), ": ", what,
                                                    " while recording an op graph"));
}

absl::StatusOr<std::unique_ptr<OpGraph>> CudaBackend::CaptureOps(
    const std::function<absl::Status()>& enqueue) {
  MOE_RETURN_IF_ERROR(UseDevice());
  MOE_RETURN_IF_ERROR(CheckNotRecording("capture_ops"));
  // The recorded launches take error slots from 0, which replays then own.
  MOE_RETURN_IF_ERROR(CheckDataErrors());
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  recording_ = true;
  const absl::Status enqueued = enqueue();
  recording_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  (void)cudaGetLastError();
  std::vector<PendingCheck> checks;
  checks.swap(pending_checks_);  // recorded, never launched
  pending_checks_.reserve(kErrorSlots);
  std::vector<void*> frees;
  frees.swap(frees_after_capture_);
  for (void* p : frees) Free(p);

  absl::Status status = enqueued;
  if (status.ok() && !frees.empty()) {
    status = absl::FailedPreconditionError(absl::StrCat(
        Device::Cuda(index_).ToString(), ": free while recording an op graph"));
  }
  if (status.ok() && ended != cudaSuccess) {
    status = cuda::CudaStatus(ended, "cudaStreamEndCapture(stream_, &graph)", __FILE__, __LINE__);
  }
  cudaGraphExec_t exec = nullptr;
  if (status.ok()) {
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    if (made != cudaSuccess) {
      (void)cudaGetLastError();
      status = cuda::CudaStatus(made, "cudaGraphInstantiate(&exec, graph, 0)", __FILE__, __LINE__);
    }
  }
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  if (!status.ok()) return status;
  return std::unique_ptr<OpGraph>(new CudaOpGraph(this, exec, std::move(checks)));
}

absl::Status CudaBackend::ReplayGraph(cudaGraphExec_t exec,
                                      const std::vector<PendingCheck>& checks) {
  MOE_RETURN_IF_ERROR(UseDevice());
  MOE_RETURN_IF_ERROR(CheckNotRecording("replaying an op graph"));
  if (!pending_checks_.empty()) MOE_RETURN_IF_ERROR(CheckDataErrors());
  MOE_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream_));
  pending_checks_ = checks;
  return absl::OkStatus();
}

}  // namespace moe
