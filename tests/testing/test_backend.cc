#include "tests/testing/test_backend.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"

namespace moe::testing {

absl::StatusOr<Device> TestBackendDevice() {
  const char* env = std::getenv("MOE_TEST_BACKEND");
  const absl::string_view name = env == nullptr ? "" : env;
  if (name.empty() || name == "cpu") return Device::Cpu();
  const size_t colon = name.find(':');
  const absl::string_view type = name.substr(0, colon);
  int index = 0;
  if (colon != absl::string_view::npos && !absl::SimpleAtoi(name.substr(colon + 1), &index)) {
    index = -1;
  }
  if (index >= 0 && type == "cuda") return Device::Cuda(index);
  if (index >= 0 && type == "xpu") return Device::Xpu(index);
  return absl::InvalidArgumentError(absl::StrCat(
      "MOE_TEST_BACKEND=\"", name, "\" names no device (cpu, cuda, cuda:N, xpu, xpu:N)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateTestBackend() {
  MOE_ASSIGN_OR_RETURN(Device device, TestBackendDevice());
  return CreateBackend(device);
}

}  // namespace moe::testing
