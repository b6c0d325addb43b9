// PLACEHOLDER being written by a helper.
#include "kernels/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/onednn_matmul_cache.h"

namespace moe {
CpuBackend::CpuBackend(CpuBackendOptions options) : num_threads_(options.num_threads) {}
CpuBackend::~CpuBackend() = default;
std::string CpuBackend::Describe() const { return "cpu"; }
absl::StatusOr<void*> CpuBackend::Allocate(size_t bytes) { return std::aligned_alloc(256, (bytes + 255) / 256 * 256); }
void CpuBackend::Free(void* p) { std::free(p); }
absl::Status CpuBackend::CopyFromHost(void* d, const void* s, size_t n) { std::memmove(d, s, n); return absl::OkStatus(); }
absl::Status CpuBackend::CopyToHost(void* d, const void* s, size_t n) { std::memmove(d, s, n); return absl::OkStatus(); }
absl::Status CpuBackend::CopyOnDevice(void* d, const void* s, size_t n) { std::memmove(d, s, n); return absl::OkStatus(); }
}  // namespace moe
