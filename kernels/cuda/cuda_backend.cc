// Device, stream, memory and copies of the CUDA backend; the ops are in cuda_backend_ops.cc.
#include "kernels/cuda/cuda_backend.h"

#include "kernels/cuda/gemm.h"
#include "kernels/cuda/sample.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

std::string GiB(size_t bytes) {
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

std::string Version(int v) { return absl::StrCat(v / 1000, ".", (v % 1000) / 10); }

absl::Status CheckCopy(absl::string_view op, const void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || (dst != nullptr && src != nullptr)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", dst == nullptr ? "dst" : "src", " is null for ", bytes, " bytes"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int index) {
  const std::string name = Device::Cuda(index).ToString();
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::NotFoundError(absl::StrCat("backend: no device ", name,
                                            " (cudaGetDeviceCount failed: ", cudaGetErrorName(err),
                                            ": ", cudaGetErrorString(err), ")"));
  }
  if (index < 0 || index >= count) {
    return absl::NotFoundError(absl::StrCat(
        "backend: no device ", name, " (this machine has ", count,
        count == 1 ? " CUDA device" : " CUDA devices",
        count > 0 ? absl::StrCat(": cuda:0 to cuda:", count - 1) : std::string(), ")"));
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend(index));
  MOE_RETURN_IF_ERROR(backend->Init());
  return backend;
}

CudaBackend::CudaBackend(int index) : index_(index) {}

absl::StatusOr<cuda::CublasLtGemm*> CudaBackend::Gemms() {
  if (gemm_ == nullptr) {
    MOE_RETURN_IF_ERROR(UseDevice());
    MOE_ASSIGN_OR_RETURN(gemm_, cuda::CublasLtGemm::Create());
  }
  return gemm_.get();
}

absl::StatusOr<float*> CudaBackend::AttentionPartials() {
  if (attention_partials_ == nullptr) {
    MOE_RETURN_IF_ERROR(CheckNotRecording("attention's first split-KV launch"));
    MOE_ASSIGN_OR_RETURN(void* p, AllocateOnStream(kAttentionPartialFloats * sizeof(float)));
    attention_partials_ = static_cast<float*>(p);
  }
  return attention_partials_;
}

absl::Status CudaBackend::Init() {
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(index_));
  cudaDeviceProp prop;
  MOE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index_));
  int runtime = 0;
  int driver = 0;
  MOE_CUDA_RETURN_IF_ERROR(cudaRuntimeGetVersion(&runtime));
  MOE_CUDA_RETURN_IF_ERROR(cudaDriverGetVersion(&driver));
  total_memory_ = prop.totalGlobalMem;
  description_ =
      absl::StrCat(Device::Cuda(index_).ToString(), " (", prop.name, ", sm_", prop.major,
                   prop.minor, ", ", prop.multiProcessorCount, " SMs, ", GiB(prop.totalGlobalMem),
                   ", CUDA runtime ", Version(runtime), ", driver ", Version(driver), ")");

  int pools = 0;
  MOE_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, index_));
  if (pools == 0) {
    return absl::UnimplementedError(absl::StrCat(
        Device::Cuda(index_).ToString(),
        ": the device or driver does not support stream-ordered memory pools (cudaMallocAsync)"));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

  cudaMemPoolProps props;
  std::memset(&props, 0, sizeof(props));
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = index_;
  MOE_CUDA_RETURN_IF_ERROR(cudaMemPoolCreate(&pool_, &props));
  // Keep freed memory in the pool across synchronizations: after warm-up, Allocate makes no
  // call into the OS or the driver's mapper (the engine allocates per step).
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  MOE_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold));

  for (StagingSlot& slot : staging_) {
    MOE_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&slot.host, kStagingSlotBytes, cudaHostAllocDefault));
    MOE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  }
  MOE_ASSIGN_OR_RETURN(void* words, AllocateOnStream(2 * kErrorSlots * sizeof(uint64_t)));
  op_error_ = static_cast<uint64_t*>(words);
  MOE_CUDA_RETURN_IF_ERROR(cudaHostAlloc(reinterpret_cast<void**>(&op_error_host_),
                                         2 * kErrorSlots * sizeof(uint64_t), cudaHostAllocDefault));
  pending_checks_.reserve(kErrorSlots);
  return Synchronize();
}

CudaBackend::~CudaBackend() {
  // Errors cannot be reported from here; each call is still made so nothing leaks.
  if (cudaSetDevice(index_) != cudaSuccess) return;
  if (stream_ != nullptr) {
    if (op_error_ != nullptr) (void)cudaFreeAsync(op_error_, stream_);
    if (attention_partials_ != nullptr) (void)cudaFreeAsync(attention_partials_, stream_);
    (void)cudaStreamSynchronize(stream_);
  }
  gemm_.reset();
  if (op_error_host_ != nullptr) (void)cudaFreeHost(op_error_host_);
  for (StagingSlot& slot : staging_) {
    if (slot.done != nullptr) (void)cudaEventDestroy(slot.done);
    if (slot.host != nullptr) (void)cudaFreeHost(slot.host);
  }
  if (pool_ != nullptr) (void)cudaMemPoolDestroy(pool_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

std::string CudaBackend::Describe() const { return description_; }

absl::Status CudaBackend::UseDevice() const {
  int current = -1;
  MOE_CUDA_RETURN_IF_ERROR(cudaGetDevice(&current));
  if (current != index_) MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(index_));
  (void)cudaGetLastError();
  return absl::OkStatus();
}

absl::Status CudaBackend::NotBuilt(absl::string_view op) {
  return absl::UnimplementedError(absl::StrCat(op, ": not built for cuda yet"));
}

absl::StatusOr<void*> CudaBackend::Allocate(size_t bytes) {
  MOE_RETURN_IF_ERROR(UseDevice());
  MOE_RETURN_IF_ERROR(CheckNotRecording(absl::StrCat("allocate(", bytes, " bytes)")));
  return AllocateOnStream(bytes);
}

absl::StatusOr<void*> CudaBackend::AllocateOnStream(size_t bytes) {
  const size_t request = std::max<size_t>(bytes, 1);
  // Measured on H100 / CUDA 13: a pool allocation larger than the device can "succeed" and
  // fail only when touched. Large requests are checked against what the device and the pool
  // can really give first (small ones are left to the pool: the query costs a driver call).
  if (request >= kCheckedAllocationBytes && request > AvailableBytes()) {
    return OutOfMemory(bytes, cudaErrorMemoryAllocation);
  }
  void* p = nullptr;
  cudaError_t err = cudaMallocFromPoolAsync(&p, request, pool_, stream_);
  if (err == cudaSuccess) return p;
  (void)cudaGetLastError();
  if (!IsOutOfMemory(err, bytes)) {
    return cuda::CudaStatus(err, "cudaMallocFromPoolAsync(&p, bytes, pool_, stream_)", __FILE__,
                            __LINE__);
  }
  // The pool may hold enough memory in pieces: let queued frees finish, give every unused
  // piece back to the device, and try once more.
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemPoolTrimTo(pool_, 0));
  err = cudaMallocFromPoolAsync(&p, request, pool_, stream_);
  if (err == cudaSuccess) return p;
  (void)cudaGetLastError();
  if (!IsOutOfMemory(err, bytes)) {
    return cuda::CudaStatus(err, "cudaMallocFromPoolAsync(&p, bytes, pool_, stream_)", __FILE__,
                            __LINE__);
  }
  return OutOfMemory(bytes, err);
}

size_t CudaBackend::AvailableBytes() const {
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
    (void)cudaGetLastError();
    return total_memory_;
  }
  uint64_t reserved = 0, used = 0;
  if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved) != cudaSuccess ||
      cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &used) != cudaSuccess) {
    (void)cudaGetLastError();
    return free_bytes;
  }
  return free_bytes + static_cast<size_t>(reserved - used);
}

// A request larger than the whole device may come back as an invalid value rather than as out
// of memory; both mean the same to the caller.
bool CudaBackend::IsOutOfMemory(cudaError_t err, size_t bytes) const {
  return err == cudaErrorMemoryAllocation ||
         (err == cudaErrorInvalidValue && bytes > total_memory_);
}

absl::Status CudaBackend::OutOfMemory(size_t bytes, cudaError_t err) {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  uint64_t reserved = 0;
  uint64_t used = 0;
  std::string device_state;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    device_state = absl::StrCat(free_bytes, " of ", total_bytes, " bytes free on the device (",
                                GiB(free_bytes), " of ", GiB(total_bytes), ")");
  } else {
    device_state = "free memory unknown (cudaMemGetInfo failed)";
  }
  (void)cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &reserved);
  (void)cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &used);
  (void)cudaGetLastError();
  return absl::ResourceExhaustedError(
      absl::StrCat(Device::Cuda(index_).ToString(), ": cannot allocate ", bytes, " bytes (",
                   GiB(bytes), "): ", device_state, "; this backend's pool holds ", reserved,
                   " bytes, ", used, " in use (", cudaGetErrorName(err), ")"));
}

void CudaBackend::Free(void* ptr) {
  if (ptr == nullptr || !UseDevice().ok()) return;
  if (recording_) {
    frees_after_capture_.push_back(ptr);
    return;
  }
  // Free returns no Status; a failure here (a pointer not from this pool) is cleared so that
  // it is not reported by the next launch instead.
  if (cudaFreeAsync(ptr, stream_) != cudaSuccess) (void)cudaGetLastError();
}

absl::Status CudaBackend::CopyFromHost(void* dst, const void* host_src, size_t bytes) {
  MOE_RETURN_IF_ERROR(CheckCopy("copy_from_host", dst, host_src, bytes));
  if (bytes == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(UseDevice());
  cudaPointerAttributes attr;
  MOE_CUDA_RETURN_IF_ERROR(cudaPointerGetAttributes(&attr, host_src));
  if (attr.type == cudaMemoryTypeDevice) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyDefault, stream_));
    return absl::OkStatus();
  }
  // A recorded copy would read the staging slot again at every replay, whatever it then holds.
  MOE_RETURN_IF_ERROR(CheckNotRecording("copy_from_host (host memory)"));
  return StageFromHost(static_cast<char*>(dst), static_cast<const char*>(host_src), bytes);
}

// Pageable memory cannot be read by the DMA engine, and a direct async copy from pinned memory
// would read the caller's buffer after we return. Copying through our own pinned slots, two in
// turn, lets the host fill one while the GPU reads the other, and returns without waiting for
// the GPU.
absl::Status CudaBackend::StageFromHost(char* dst, const char* src, size_t bytes) {
  for (size_t offset = 0; offset < bytes; offset += kStagingSlotBytes) {
    const size_t n = std::min(kStagingSlotBytes, bytes - offset);
    StagingSlot& slot = staging_[next_slot_];
    next_slot_ = (next_slot_ + 1) % kStagingSlots;
    MOE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(slot.done));
    std::memcpy(slot.host, src + offset, n);
    MOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst + offset, slot.host, n, cudaMemcpyHostToDevice, stream_));
    MOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(slot.done, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  MOE_RETURN_IF_ERROR(CheckCopy("copy_to_host", host_dst, src, bytes));
  if (bytes == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(UseDevice());
  MOE_RETURN_IF_ERROR(CheckNotRecording("copy_to_host"));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDefault, stream_));
  return CheckDataErrors();
}

absl::Status CudaBackend::CopyOnDevice(void* dst, const void* src, size_t bytes) {
  MOE_RETURN_IF_ERROR(CheckCopy("copy_on_device", dst, src, bytes));
  if (bytes == 0 || dst == src) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(UseDevice());
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t s = reinterpret_cast<uintptr_t>(src);
  if (d + bytes <= s || s + bytes <= d) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return absl::OkStatus();
  }
  // cudaMemcpy is undefined for overlapping ranges; memmove semantics (as the CPU backend)
  // through a temporary copy. Rare, so the extra pass does not matter.
  MOE_RETURN_IF_ERROR(CheckNotRecording("an overlapping copy_on_device"));
  MOE_ASSIGN_OR_RETURN(void* tmp, AllocateOnStream(bytes));
  cudaError_t err = cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, stream_);
  if (err == cudaSuccess) err = cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, stream_);
  (void)cudaFreeAsync(tmp, stream_);
  return cuda::CudaStatus(err, "cudaMemcpyAsync (overlapping copy_on_device via a temporary)",
                          __FILE__, __LINE__);
}

absl::Status CudaBackend::Synchronize() {
  MOE_RETURN_IF_ERROR(UseDevice());
  return CheckDataErrors();
}

absl::Status CudaBackend::CheckDataErrors() {
  MOE_RETURN_IF_ERROR(CheckNotRecording("waiting for the device"));
  const size_t n = pending_checks_.size();
  if (n > 0) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(op_error_host_, op_error_,
                                             2 * n * sizeof(uint64_t), cudaMemcpyDeviceToHost,
                                             stream_));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  // Taken out first: a report may copy from the device (Bincount reads its ids back).
  std::vector<PendingCheck> checks;
  checks.swap(pending_checks_);
  pending_checks_.reserve(kErrorSlots);
  for (size_t i = 0; i < n; ++i) {
    MOE_RETURN_IF_ERROR(checks[i].report(op_error_host_ + 2 * i));
  }
  return absl::OkStatus();
}

size_t CudaBackend::SampleWorkspaceBytes(int64_t rows, int64_t vocab) const {
  if (rows <= 0 || vocab <= 0) return 0;
  return cuda::SampleWorkspaceBytes(rows, vocab);
}

}  // namespace moe
