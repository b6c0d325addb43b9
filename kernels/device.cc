#include "kernels/device.h"

namespace moe {

std::string Device::ToString() const {
  switch (type) {
    case DeviceType::kCpu:
      // The one CPU device prints as "cpu"; any other index must show, or "no device cpu:1"
      // would read "no device cpu".
      return index == 0 ? "cpu" : "cpu:" + std::to_string(index);
    case DeviceType::kCuda:
      return "cuda:" + std::to_string(index);
    case DeviceType::kXpu:
      return "xpu:" + std::to_string(index);
  }
  return "?";
}

}  // namespace moe
