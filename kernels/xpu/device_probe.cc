#include "kernels/xpu/device_probe.h"

#include <level_zero/ze_api.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"
#include "kernels/xpu/ze_status.h"

namespace moe::xpu {

std::string XpuDeviceInfo::ToString() const {
  return absl::StrFormat("xpu:%d %s (%04x:%04x, driver %u)", index, name, vendor_id, device_id,
                         driver_index);
}

absl::StatusOr<std::vector<XpuDeviceInfo>> ProbeXpuDevices() {
  const ze_result_t init = zeInit(ZE_INIT_FLAG_GPU_ONLY);
  if (init == ZE_RESULT_ERROR_UNINITIALIZED) {
    return absl::NotFoundError(
        absl::StrCat("no Level Zero device: zeInit(ZE_INIT_FLAG_GPU_ONLY) "
                     "returned ",
                     ZeResultName(init), ", no GPU driver was found"));
  }
  MOE_RETURN_IF_ERROR(ZeStatus(init, "zeInit(ZE_INIT_FLAG_GPU_ONLY)", __FILE__, __LINE__));

  uint32_t driver_count = 0;
  MOE_ZE_RETURN_IF_ERROR(zeDriverGet(&driver_count, nullptr));
  if (driver_count == 0)
    return absl::NotFoundError("no Level Zero device: zeDriverGet reported 0 drivers");
  std::vector<ze_driver_handle_t> drivers(driver_count);
  MOE_ZE_RETURN_IF_ERROR(zeDriverGet(&driver_count, drivers.data()));
  drivers.resize(driver_count);

  std::vector<XpuDeviceInfo> out;
  for (uint32_t d = 0; d < drivers.size(); ++d) {
    uint32_t device_count = 0;
    MOE_ZE_RETURN_IF_ERROR(zeDeviceGet(drivers[d], &device_count, nullptr));
    std::vector<ze_device_handle_t> devices(device_count);
    MOE_ZE_RETURN_IF_ERROR(zeDeviceGet(drivers[d], &device_count, devices.data()));
    devices.resize(device_count);
    for (ze_device_handle_t device : devices) {
      ze_device_properties_t props = {};
      props.stype = ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES;
      MOE_ZE_RETURN_IF_ERROR(zeDeviceGetProperties(device, &props));
      if (props.type != ZE_DEVICE_TYPE_GPU) continue;
      XpuDeviceInfo info;
      info.index = static_cast<int>(out.size());
      info.driver_index = d;
      info.name = props.name;
      info.vendor_id = props.vendorId;
      info.device_id = props.deviceId;
      info.max_mem_alloc_size = props.maxMemAllocSize;
      out.push_back(std::move(info));
    }
  }
  if (out.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no Level Zero device: ", driver_count, " driver(s) report no GPU"));
  }
  return out;
}

}  // namespace moe::xpu
