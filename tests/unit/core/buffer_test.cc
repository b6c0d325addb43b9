#include "engine/core/buffer.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/core/fake_backend.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// The message as a std::string, so failures print it as text.
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(AllocatorTest, CountsAllocationsAndBytesInUse) {
  testing::FakeBackend backend;
  Allocator allocator(&backend);
  EXPECT_EQ(allocator.allocation_count(), 0);
  EXPECT_EQ(allocator.bytes_in_use(), 0u);
  EXPECT_EQ(allocator.backend(), &backend);

  auto a = allocator.Allocate(100);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = allocator.Allocate(28);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*a)->size(), 100u);
  EXPECT_NE((*a)->data(), nullptr);
  EXPECT_EQ(allocator.allocation_count(), 2);
  EXPECT_EQ(allocator.bytes_in_use(), 128u);
  EXPECT_EQ(backend.allocate_calls(), 2);

  a->reset();
  EXPECT_EQ(allocator.bytes_in_use(), 28u);
  EXPECT_EQ(allocator.allocation_count(), 2) << "a count of Allocate calls, not of live buffers";
  EXPECT_EQ(backend.free_calls(), 1);
  b->reset();
  EXPECT_EQ(allocator.bytes_in_use(), 0u);
  EXPECT_EQ(backend.free_calls(), 2);
  EXPECT_EQ(backend.bytes_live(), 0u);
}

TEST(AllocatorTest, ZeroBytesNeedNoDeviceMemory) {
  testing::FakeBackend backend;
  Allocator allocator(&backend);
  auto a = allocator.Allocate(0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->size(), 0u);
  EXPECT_EQ((*a)->data(), nullptr);
  EXPECT_EQ(allocator.allocation_count(), 1);
  EXPECT_EQ(backend.allocate_calls(), 0);
  a->reset();
  EXPECT_EQ(backend.free_calls(), 0);
  EXPECT_EQ(allocator.bytes_in_use(), 0u);
}

TEST(AllocatorTest, DeviceOutOfMemoryIsResourceExhaustedAndCountsNothing) {
  testing::FakeBackend backend(Device::Cuda(0), /*capacity=*/1000);
  Allocator allocator(&backend);
  auto a = allocator.Allocate(1000);
  ASSERT_TRUE(a.ok()) << "exactly the capacity";
  auto b = allocator.Allocate(1);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(b.status()), HasSubstr("1 bytes"));
  EXPECT_EQ(allocator.allocation_count(), 1);
  EXPECT_EQ(allocator.bytes_in_use(), 1000u);
  a->reset();
  EXPECT_TRUE(allocator.Allocate(1).ok()) << "freed memory is reusable";
}

TEST(BufferTest, ReportsTheBackendsDevice) {
  testing::FakeBackend backend(Device::Xpu(2));
  Allocator allocator(&backend);
  auto a = allocator.Allocate(8);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->device(), Device::Xpu(2));
  EXPECT_EQ((*a)->device().ToString(), "xpu:2");
}

}  // namespace
}  // namespace moe
