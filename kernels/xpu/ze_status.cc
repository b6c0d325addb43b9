#include "kernels/xpu/ze_status.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::xpu {
namespace {

const char* KnownName(ze_result_t r) {
  switch (r) {
#define MOE_ZE_NAME_(x) \
  case x:               \
    return #x;
    MOE_ZE_NAME_(ZE_RESULT_SUCCESS)
    MOE_ZE_NAME_(ZE_RESULT_NOT_READY)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_DEVICE_LOST)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_MODULE_BUILD_FAILURE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_MODULE_LINK_FAILURE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_DEVICE_REQUIRES_RESET)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INSUFFICIENT_PERMISSIONS)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_NOT_AVAILABLE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNINITIALIZED)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNSUPPORTED_VERSION)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNSUPPORTED_FEATURE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INVALID_ARGUMENT)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INVALID_NULL_HANDLE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INVALID_NULL_POINTER)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INVALID_SIZE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNSUPPORTED_SIZE)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_INVALID_ENUMERATION)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION)
    MOE_ZE_NAME_(ZE_RESULT_ERROR_UNKNOWN)
#undef MOE_ZE_NAME_
    default:
      return nullptr;
  }
}

absl::StatusCode CodeFor(ze_result_t r) {
  switch (r) {
    case ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY:
    case ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY:
      return absl::StatusCode::kResourceExhausted;
    case ZE_RESULT_ERROR_INVALID_ARGUMENT:
    case ZE_RESULT_ERROR_INVALID_NULL_HANDLE:
    case ZE_RESULT_ERROR_INVALID_NULL_POINTER:
    case ZE_RESULT_ERROR_INVALID_SIZE:
    case ZE_RESULT_ERROR_INVALID_ENUMERATION:
      return absl::StatusCode::kInvalidArgument;
    case ZE_RESULT_ERROR_UNSUPPORTED_VERSION:
    case ZE_RESULT_ERROR_UNSUPPORTED_FEATURE:
    case ZE_RESULT_ERROR_UNSUPPORTED_SIZE:
    case ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT:
    case ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION:
      return absl::StatusCode::kUnimplemented;
    default:
      return absl::StatusCode::kUnavailable;
  }
}

}  // namespace

std::string ZeResultName(ze_result_t result) {
  const uint32_t value = static_cast<uint32_t>(result);
  if (const char* name = KnownName(result)) return absl::StrFormat("%s (0x%x)", name, value);
  return absl::StrFormat("ze_result_t 0x%x", value);
}

absl::Status ZeStatus(ze_result_t result, const char* call, const char* file, int line) {
  if (result == ZE_RESULT_SUCCESS) return absl::OkStatus();
  return absl::Status(CodeFor(result), absl::StrCat(call, " failed: ", ZeResultName(result), " at ",
                                                    file, ":", line));
}

}  // namespace moe::xpu
