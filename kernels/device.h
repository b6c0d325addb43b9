// Where memory lives and kernels run: a device type and an index among devices of that type.
#ifndef MOE_KERNELS_DEVICE_H_
#define MOE_KERNELS_DEVICE_H_

#include <string>

namespace moe {

enum class DeviceType { kCpu, kCuda, kXpu };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static Device Cpu() { return Device{DeviceType::kCpu, 0}; }
  static Device Cuda(int i) { return Device{DeviceType::kCuda, i}; }
  static Device Xpu(int i) { return Device{DeviceType::kXpu, i}; }

  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }

  // "cpu", "cuda:0", "xpu:1".
  std::string ToString() const;
};

}  // namespace moe

#endif  // MOE_KERNELS_DEVICE_H_
