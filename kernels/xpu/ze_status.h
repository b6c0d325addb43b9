// Level Zero results as absl::Status, naming the failed call and where it was made.
//
//   MOE_ZE_RETURN_IF_ERROR(zeDriverGet(&count, nullptr));
//
// returns from the enclosing function (which returns absl::Status) with e.g.
//   UNAVAILABLE: zeDriverGet(&count, nullptr) failed: ZE_RESULT_ERROR_DEVICE_LOST (0x70000001)
//   at kernels/xpu/device_probe.cc:40
// if the call does not return ZE_RESULT_SUCCESS.
#ifndef MOE_KERNELS_XPU_ZE_STATUS_H_
#define MOE_KERNELS_XPU_ZE_STATUS_H_

#include <level_zero/ze_api.h>

#include <string>

#include "absl/status/status.h"

namespace moe::xpu {

// "ZE_RESULT_ERROR_DEVICE_LOST (0x70000001)"; unknown values as "ze_result_t 0x...".
std::string ZeResultName(ze_result_t result);

// OK for ZE_RESULT_SUCCESS; otherwise a Status whose code follows the result (out of memory:
// ResourceExhausted; invalid argument, size or null pointer: InvalidArgument; unsupported:
// Unimplemented; else Unavailable) and whose message names `call`, the result and file:line.
absl::Status ZeStatus(ze_result_t result, const char* call, const char* file, int line);

}  // namespace moe::xpu

#define MOE_ZE_RETURN_IF_ERROR(expr)                                          \
  do {                                                                        \
    const ze_result_t moe_ze_result_ = (expr);                                \
    if (moe_ze_result_ != ZE_RESULT_SUCCESS) {                                \
      return ::moe::xpu::ZeStatus(moe_ze_result_, #expr, __FILE__, __LINE__); \
    }                                                                         \
  } while (0)

#endif  // MOE_KERNELS_XPU_ZE_STATUS_H_
