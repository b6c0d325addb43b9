#include "engine/core/workspace.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/core/fake_backend.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// The message as a std::string, so failures print it as text.
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

class WorkspaceTest : public ::testing::Test {
 protected:
  testing::FakeBackend backend_;
  Allocator allocator_{&backend_};
  Workspace ws_{&allocator_};
};

TEST_F(WorkspaceTest, AlignedRoundsUpToTheAlignment) {
  EXPECT_EQ(Workspace::Aligned(0), 0u);
  EXPECT_EQ(Workspace::Aligned(1), 256u);
  EXPECT_EQ(Workspace::Aligned(255), 256u);
  EXPECT_EQ(Workspace::Aligned(256), 256u);
  EXPECT_EQ(Workspace::Aligned(257), 512u);
}

TEST_F(WorkspaceTest, ReserveTakeReset) {
  EXPECT_EQ(ws_.capacity(), 0u);
  ASSERT_TRUE(ws_.Reserve(1000).ok());
  EXPECT_EQ(ws_.capacity(), 1024u);
  EXPECT_EQ(allocator_.allocation_count(), 1);
  EXPECT_EQ(allocator_.bytes_in_use(), 1024u);

  absl::StatusOr<Tensor> a = ws_.Take(DType::kF32, {10});
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<Tensor> b = ws_.Take(DType::kBF16, {3, 50});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->shape(), (Shape{10}));
  EXPECT_EQ(b->dtype(), DType::kBF16);
  EXPECT_EQ(static_cast<char*>(b->data()) - static_cast<char*>(a->data()), 256);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % Workspace::kAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % Workspace::kAlignment, 0u);
  EXPECT_FALSE(a->Overlaps(*b));
  EXPECT_EQ(ws_.used(), 256u + 512u);

  ws_.Reset();
  EXPECT_EQ(ws_.used(), 0u);
  absl::StatusOr<Tensor> again = ws_.Take(DType::kU8, {1});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data(), a->data()) << "Reset hands the same memory out again";
  EXPECT_EQ(allocator_.allocation_count(), 1);
}

TEST_F(WorkspaceTest, TakeBeyondCapacityNamesTheSizes) {
  ASSERT_TRUE(ws_.Reserve(1024).ok());
  ASSERT_TRUE(ws_.Take(DType::kF32, {192}).ok());  // 768 bytes
  // Exactly the rest fits (limit), one byte more does not (limit + 1).
  absl::StatusOr<Tensor> over = ws_.Take(DType::kU8, {257});
  ASSERT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Msg(over.status()), "workspace: u8[257] needs 1280 bytes in all; reserved 1024");
  EXPECT_EQ(ws_.used(), 768u) << "a failed Take takes nothing";
  ASSERT_TRUE(ws_.Take(DType::kU8, {256}).ok());
  EXPECT_EQ(ws_.used(), 1024u);
  over = ws_.Take(DType::kF32, {1});
  ASSERT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Msg(over.status()), "workspace: f32[1] needs 1280 bytes in all; reserved 1024");
  absl::StatusOr<Tensor> empty = ws_.Take(DType::kF32, {0, 8});
  ASSERT_TRUE(empty.ok()) << "an empty slice fits a full workspace";
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(allocator_.allocation_count(), 1) << "Take never allocates";
}

TEST_F(WorkspaceTest, TakeBeforeReserve) {
  absl::StatusOr<Tensor> t = ws_.Take(DType::kF32, {1});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Msg(t.status()), "workspace: f32[1] needs 256 bytes in all; reserved 0");
  // An empty slice of an empty workspace: a valid empty view, not a crash.
  t = ws_.Take(DType::kBF16, {0});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->numel(), 0);
  EXPECT_EQ(t->device(), Device::Cpu());
  EXPECT_EQ(allocator_.allocation_count(), 0);
}

TEST_F(WorkspaceTest, TakeRejectsBadShapes) {
  ASSERT_TRUE(ws_.Reserve(1024).ok());
  absl::StatusOr<Tensor> t = ws_.Take(DType::kF32, {-1});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), "workspace: negative extent in shape [-1]");
  // 2^62 * 4 bytes wraps to 0: it must not pass as an empty slice.
  t = ws_.Take(DType::kF32, {int64_t{1} << 62});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()), HasSubstr("exceeds 2^63 bytes"));
  t = ws_.Take(DType::kF32, {int64_t{1} << 40});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ws_.used(), 0u);
}

TEST_F(WorkspaceTest, GrowingWithOutstandingSlicesIsRefused) {
  ASSERT_TRUE(ws_.Reserve(512).ok());
  ASSERT_TRUE(ws_.Take(DType::kF32, {10}).ok());
  absl::Status s = ws_.Reserve(513);
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Msg(s), "workspace: cannot grow to 513 bytes while 256 bytes are taken");
  EXPECT_EQ(ws_.capacity(), 512u);
  // Within capacity it is fine with slices out (limit), and allocates nothing.
  EXPECT_TRUE(ws_.Reserve(512).ok());
  EXPECT_TRUE(ws_.Reserve(1).ok());
  EXPECT_EQ(allocator_.allocation_count(), 1);

  ws_.Reset();
  ASSERT_TRUE(ws_.Reserve(5000).ok());
  EXPECT_EQ(ws_.capacity(), 5120u);
  EXPECT_EQ(allocator_.allocation_count(), 2);
  EXPECT_EQ(allocator_.bytes_in_use(), 5120u) << "the old buffer was freed";
  EXPECT_EQ(backend_.free_calls(), 1);
}

TEST_F(WorkspaceTest, NoAllocationAfterReserve) {
  ASSERT_TRUE(ws_.Reserve(Workspace::Aligned(4 * 64 * 32) + Workspace::Aligned(2 * 64 * 32) +
                          Workspace::Aligned(4 * 64))
                  .ok());
  const int64_t allocations = allocator_.allocation_count();
  const int backend_calls = backend_.allocate_calls();
  for (int step = 0; step < 1000; ++step) {
    ws_.Reset();
    ASSERT_TRUE(ws_.Reserve(ws_.capacity()).ok());
    ASSERT_TRUE(ws_.Take(DType::kF32, {64, 32}).ok());
    ASSERT_TRUE(ws_.Take(DType::kBF16, {64, 32}).ok());
    ASSERT_TRUE(ws_.Take(DType::kI32, {64}).ok());
  }
  EXPECT_EQ(allocator_.allocation_count(), allocations);
  EXPECT_EQ(backend_.allocate_calls(), backend_calls);
  EXPECT_EQ(backend_.free_calls(), 0);
}

TEST_F(WorkspaceTest, ReserveFailuresAreResourceExhausted) {
  // A size whose alignment would wrap past SIZE_MAX to a tiny buffer.
  absl::Status s = ws_.Reserve(std::numeric_limits<size_t>::max());
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("18446744073709551615"));
  EXPECT_EQ(ws_.capacity(), 0u);

  testing::FakeBackend small(Device::Cuda(0), /*capacity=*/4096);
  Allocator allocator(&small);
  Workspace ws(&allocator);
  ASSERT_TRUE(ws.Reserve(4096).ok());
  s = ws.Reserve(4097);
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("4352 bytes"));  // the aligned size it asked the device for
}

}  // namespace
}  // namespace moe
