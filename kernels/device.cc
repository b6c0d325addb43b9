#include "kernels/device.h"

namespace moe {

std::string Device::ToString() const {
  switch (type) {
    case DeviceType::kCpu:
      return "cpu";
    case DeviceType::kCuda:
      return "cuda:" + std::to_string(index);
    case DeviceType::kXpu:
      return "xpu:" + std::to_string(index);
  }
  return "?";
}

}  // namespace moe
