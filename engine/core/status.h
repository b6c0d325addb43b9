// Status and StatusOr are absl's; the propagation macros are shared with kernels/.
#ifndef MOE_ENGINE_CORE_STATUS_H_
#define MOE_ENGINE_CORE_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/status_macros.h"

#endif  // MOE_ENGINE_CORE_STATUS_H_
