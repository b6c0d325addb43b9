// The Level Zero probe gives a clean Status on a machine without an Intel GPU (this one, and
// CI), and lists the devices where there are some.
#include "kernels/xpu/device_probe.h"

#include <iostream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/xpu/ze_status.h"

namespace moe::xpu {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(DeviceProbeTest, ListsDevicesOrSaysWhyNot) {
  const absl::StatusOr<std::vector<XpuDeviceInfo>> devices = ProbeXpuDevices();
  if (devices.ok()) {
    ASSERT_FALSE(devices->empty()) << "an OK probe lists at least one device";
    for (size_t i = 0; i < devices->size(); ++i) {
      const XpuDeviceInfo& d = (*devices)[i];
      std::cout << "Level Zero device: " << d.ToString() << ", max allocation "
                << d.max_mem_alloc_size << " bytes\n";
      EXPECT_EQ(d.index, static_cast<int>(i));
      EXPECT_FALSE(d.name.empty());
    }
    return;
  }
  std::cout << "Level Zero probe: " << devices.status() << "\n";
  const absl::StatusCode code = devices.status().code();
  ASSERT_TRUE(code == absl::StatusCode::kNotFound || code == absl::StatusCode::kUnavailable)
      << devices.status();
  if (code == absl::StatusCode::kNotFound) {
    EXPECT_THAT(Msg(devices.status()), HasSubstr("no Level Zero device"));
  } else {
    EXPECT_THAT(Msg(devices.status()), HasSubstr("ze"));  // names the failing ze* call
    EXPECT_THAT(Msg(devices.status()), HasSubstr("ZE_RESULT_"));
  }
}

TEST(DeviceProbeTest, RepeatedProbesAgree) {
  const auto first = ProbeXpuDevices();
  const auto second = ProbeXpuDevices();
  EXPECT_EQ(first.ok(), second.ok());
  EXPECT_EQ(first.status().code(), second.status().code());
  if (first.ok()) {
    EXPECT_EQ(first->size(), second->size());
  }
}

TEST(ZeStatusTest, NamesTheCallTheResultAndTheLine) {
  const absl::Status s =
      ZeStatus(ZE_RESULT_ERROR_DEVICE_LOST, "zeCommandQueueSynchronize(q, UINT64_MAX)", "x.cc", 7);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Msg(s),
            "zeCommandQueueSynchronize(q, UINT64_MAX) failed: ZE_RESULT_ERROR_DEVICE_LOST "
            "(0x70000001) at x.cc:7");
  EXPECT_TRUE(ZeStatus(ZE_RESULT_SUCCESS, "zeInit(0)", "x.cc", 1).ok());
  EXPECT_EQ(ZeStatus(ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY, "c", "f", 1).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ZeStatus(ZE_RESULT_ERROR_INVALID_NULL_POINTER, "c", "f", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ZeResultName(static_cast<ze_result_t>(0x12345)), "ze_result_t 0x12345");
}

absl::Status FailsWith(ze_result_t r) {
  MOE_ZE_RETURN_IF_ERROR(r);
  return absl::OkStatus();
}

TEST(ZeStatusTest, MacroReturnsOnlyOnError) {
  EXPECT_TRUE(FailsWith(ZE_RESULT_SUCCESS).ok());
  const absl::Status s = FailsWith(ZE_RESULT_ERROR_UNINITIALIZED);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(s), HasSubstr("r failed: ZE_RESULT_ERROR_UNINITIALIZED (0x78000001) at "
                                "tests/unit/xpu/device_probe_test.cc:"));
}

}  // namespace
}  // namespace moe::xpu
