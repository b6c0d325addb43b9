#include "kernels/registry.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// The message as a std::string, so failures print it as text.
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(RegistryTest, CpuBackendExists) {
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device::Cpu());
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_NE(*b, nullptr);
  EXPECT_EQ((*b)->device(), Device::Cpu());
  EXPECT_FALSE((*b)->Describe().empty());
}

TEST(RegistryTest, OnlyOneCpuDevice) {
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device{DeviceType::kCpu, 1});
  ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(b.status()), HasSubstr("cpu:1"));
}

TEST(RegistryTest, BackendsNotBuiltInAreUnimplementedNamingTheDevice) {
  for (const Device& d : {Device::Xpu(0)}) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(d);
    ASSERT_EQ(b.status().code(), absl::StatusCode::kUnimplemented) << d.ToString();
    EXPECT_THAT(Msg(b.status()), HasSubstr(d.ToString()));
  }
}

// CUDA is built in where the toolkit was found (tests/unit/cuda/cuda_backend_test covers it);
// either way a device that is not there names itself.
TEST(RegistryTest, MissingCudaDeviceIsUnimplementedOrNotFound) {
  const Device d = Device::Cuda(64);
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(d);
  if (b.status().code() == absl::StatusCode::kUnimplemented) {
    EXPECT_THAT(Msg(b.status()), HasSubstr("cuda:64 is not built into this binary"));
  } else {
    ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
    EXPECT_THAT(Msg(b.status()), HasSubstr("no device cuda:64"));
  }
}

TEST(DeviceTest, NamesAndEquality) {
  EXPECT_EQ(Device::Cpu().ToString(), "cpu");
  EXPECT_EQ(Device::Cuda(0).ToString(), "cuda:0");
  EXPECT_EQ(Device::Xpu(1).ToString(), "xpu:1");
  EXPECT_EQ(Device::Cuda(1), Device::Cuda(1));
  EXPECT_NE(Device::Cuda(0), Device::Cuda(1));
  EXPECT_NE(Device::Cuda(0), Device::Xpu(0));
  EXPECT_EQ(Device(), Device::Cpu());
  EXPECT_EQ((Device{DeviceType::kCpu, 1}).ToString(), "cpu:1");
}

}  // namespace
}  // namespace moe
