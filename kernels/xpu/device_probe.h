// Which Intel GPUs this machine has, through the Level Zero loader: the first piece of the XPU
// backend, and the proof that the level-zero system library links.
#ifndef MOE_KERNELS_XPU_DEVICE_PROBE_H_
#define MOE_KERNELS_XPU_DEVICE_PROBE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::xpu {

struct XpuDeviceInfo {
  int index = 0;              // N in "xpu:N": GPU devices counted over drivers, in loader order
  uint32_t driver_index = 0;  // which Level Zero driver reports it
  std::string name;           // e.g. "Intel(R) Data Center GPU Max 1550"
  uint32_t vendor_id = 0;     // PCI ids
  uint32_t device_id = 0;
  uint64_t max_mem_alloc_size = 0;  // bytes

  // "xpu:0 Intel(R) Data Center GPU Max 1550 (8086:0bd5, driver 0)".
  std::string ToString() const;
};

// Initialises Level Zero for GPUs (zeInit; repeated calls are cheap) and lists every GPU device
// of every driver (zeDriverGet, zeDeviceGet, zeDeviceGetProperties).
// NotFound "no Level Zero device: ..." when no driver is installed (zeInit's
// ZE_RESULT_ERROR_UNINITIALIZED, the loader's answer when it finds none) or the drivers report
// no GPU; Unavailable (or the code ZeStatus gives) naming the failing call and its ze_result_t
// for any other failure. Thread-safe.
absl::StatusOr<std::vector<XpuDeviceInfo>> ProbeXpuDevices();

}  // namespace moe::xpu

#endif  // MOE_KERNELS_XPU_DEVICE_PROBE_H_
