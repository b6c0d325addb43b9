// The backends compiled into this binary, listed explicitly (no static registration).
#ifndef MOE_KERNELS_REGISTRY_H_
#define MOE_KERNELS_REGISTRY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/device.h"

namespace moe {

struct BackendOptions {
  // CPU threads for the CPU backend; 0 = all cores.
  int cpu_threads = 0;
};

// Creates the backend for `device`. Unimplemented naming the device if this binary was built
// without that backend; NotFound if the device does not exist.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device, BackendOptions options = {});

}  // namespace moe

#endif  // MOE_KERNELS_REGISTRY_H_
