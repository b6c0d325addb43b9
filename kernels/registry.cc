#include "kernels/registry.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"

namespace moe {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device, BackendOptions options) {
  switch (device.type) {
    case DeviceType::kCpu:
      if (device.index != 0) {
        return absl::NotFoundError(
            absl::StrCat("backend: no device ", device.ToString(), " (the CPU is device cpu:0)"));
      }
      return std::unique_ptr<Backend>(new CpuBackend(CpuBackendOptions{options.cpu_threads}));
    case DeviceType::kCuda:
    case DeviceType::kXpu:
      break;
  }
  return absl::UnimplementedError(absl::StrCat("backend: ", device.ToString(),
                                               " is not built into this binary (available: cpu)"));
}

}  // namespace moe
