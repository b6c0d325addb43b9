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
// without that backend (cuda is built in where the CUDA toolkit was found at build time, unless
// --define=moe_cuda=off); NotFound naming the device if it does not exist, with the number of
// devices of its type or why none can be counted (e.g. "no device cuda:0 (cudaGetDeviceCount
// failed: cudaErrorNoDevice: ...)"); for CUDA, the Status of a failed CUDA call while setting
// the backend up.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device, BackendOptions options = {});

}  // namespace moe

#endif  // MOE_KERNELS_REGISTRY_H_
