#include "kernels/registry.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#if defined(MOE_WITH_CUDA)
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moe {
namespace {

#if defined(MOE_WITH_CUDA)
constexpr char kAvailable[] = "cpu, cuda";
#else
constexpr char kAvailable[] = "cpu";
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device, BackendOptions options) {
  switch (device.type) {
    case DeviceType::kCpu:
      if (device.index != 0) {
        return absl::NotFoundError(
            absl::StrCat("backend: no device ", device.ToString(), " (the CPU is device cpu:0)"));
      }
      return std::unique_ptr<Backend>(new CpuBackend(CpuBackendOptions{options.cpu_threads}));
    case DeviceType::kCuda: {
#if defined(MOE_WITH_CUDA)
      absl::StatusOr<std::unique_ptr<CudaBackend>> cuda = CudaBackend::Create(device.index);
      if (!cuda.ok()) return cuda.status();
      return std::unique_ptr<Backend>(std::move(cuda).value());
#else
      break;
#endif
    }
    case DeviceType::kXpu:
      break;
  }
  return absl::UnimplementedError(
      absl::StrCat("backend: ", device.ToString(),
                   " is not built into this binary (available: ", kAvailable, ")"));
}

}  // namespace moe
