#include "engine/core/tensor.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "engine/core/buffer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/core/fake_backend.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// The message as a std::string, so failures print it as text.
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

class TensorTest : public ::testing::Test {
 protected:
  // A 64-byte buffer on the CPU.
  void SetUp() override {
    auto b = allocator_.Allocate(64);
    ASSERT_TRUE(b.ok()) << b.status();
    buffer_ = *std::move(b);
  }
  char* base() const { return static_cast<char*>(buffer_->data()); }
  Tensor View(DType dtype, Shape shape, int64_t offset = 0) const {
    auto t = Tensor::OnBuffer(*buffer_, dtype, std::move(shape), offset);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : Tensor();
  }

  testing::FakeBackend backend_;
  Allocator allocator_{&backend_};
  std::unique_ptr<Buffer> buffer_;
};

TEST_F(TensorTest, OnBufferViewsTheBytesAtTheOffset) {
  const Tensor t = View(DType::kBF16, {3, 4}, 8);
  EXPECT_EQ(t.data(), base() + 8);
  EXPECT_EQ(t.device(), Device::Cpu());
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_EQ(t.rank(), 2);
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.nbytes(), 24);
  EXPECT_EQ(t.ToString(), "bf16[3, 4] on cpu");
}

TEST_F(TensorTest, OnBufferAtTheExactLimit) {
  // 64 bytes: 16 f32 fit from offset 0, 15 from offset 4, and nothing more.
  EXPECT_TRUE(Tensor::OnBuffer(*buffer_, DType::kF32, {15}).ok());
  EXPECT_TRUE(Tensor::OnBuffer(*buffer_, DType::kF32, {16}).ok());
  EXPECT_TRUE(Tensor::OnBuffer(*buffer_, DType::kF32, {15}, 4).ok());
  EXPECT_TRUE(Tensor::OnBuffer(*buffer_, DType::kU8, {0}, 64).ok()) << "empty view at the end";

  absl::StatusOr<Tensor> t = Tensor::OnBuffer(*buffer_, DType::kF32, {17});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), "tensor: f32[17] at offset 0 needs 68 bytes; the buffer holds 64");

  t = Tensor::OnBuffer(*buffer_, DType::kF32, {2, 8}, 4);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), "tensor: f32[2, 8] at offset 4 needs 68 bytes; the buffer holds 64");

  t = Tensor::OnBuffer(*buffer_, DType::kU8, {0}, 65);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()), HasSubstr("at offset 65 needs 65 bytes"));
}

TEST_F(TensorTest, OnBufferRejectsNegativeOffsetsAndExtents) {
  absl::StatusOr<Tensor> t = Tensor::OnBuffer(*buffer_, DType::kF32, {2}, -4);
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), "tensor: f32[2] at negative offset -4");

  t = Tensor::OnBuffer(*buffer_, DType::kF32, {2, -1});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(t.status()), "tensor: negative extent in shape [2, -1]");
}

TEST_F(TensorTest, OnBufferRejectsSizesThatWouldWrap) {
  // 2^62 * 4 bytes wraps to 0 in 64 bits; it must not pass as an empty view.
  absl::StatusOr<Tensor> t = Tensor::OnBuffer(*buffer_, DType::kF32, {int64_t{1} << 62});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()), HasSubstr("exceeds 2^63 bytes"));
  t = Tensor::OnBuffer(*buffer_, DType::kU8, {int64_t{1} << 32, int64_t{1} << 32});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  // Large but representable: a plain bounds error.
  t = Tensor::OnBuffer(*buffer_, DType::kF32, {int64_t{1} << 40});
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(t.status()), HasSubstr("the buffer holds 64"));
  t = Tensor::OnBuffer(*buffer_, DType::kU8, {1}, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  // A zero extent makes any other extent harmless.
  EXPECT_TRUE(Tensor::OnBuffer(*buffer_, DType::kF32, {int64_t{1} << 62, 0}).ok());
}

TEST_F(TensorTest, StridesAreRowMajor) {
  const Tensor t = View(DType::kU8, {2, 3, 4});
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.stride(1), 4);
  EXPECT_EQ(t.stride(2), 1);
  EXPECT_EQ(t.stride(-1), 1);
  EXPECT_EQ(t.stride(-3), 12);
}

TEST_F(TensorTest, TypedAccessChecksTheDtype) {
  const Tensor t = View(DType::kF32, {2, 3});
  absl::StatusOr<float*> f = t.As<float>();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(static_cast<void*>(*f), t.data());
  absl::StatusOr<bf16*> b = t.As<bf16>();
  ASSERT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Msg(b.status()), "tensor: requested bf16 data of a f32[2, 3] on cpu");
  EXPECT_EQ(t.As<int32_t>().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TensorTest, RowsSlicesDimensionZero) {
  const Tensor t = View(DType::kF32, {5, 3});
  absl::StatusOr<Tensor> r = t.Rows(1, 2);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->shape(), (Shape{2, 3}));
  EXPECT_EQ(r->data(), base() + 12);
  EXPECT_EQ(r->device(), t.device());
  r = t.Rows(5, 0);
  ASSERT_TRUE(r.ok()) << "empty slice at the end";
  EXPECT_EQ(r->numel(), 0);
  EXPECT_TRUE(t.Rows(0, 5).ok());
  EXPECT_TRUE(t.Rows(4, 1).ok());
}

TEST_F(TensorTest, RowsOutOfRange) {
  const Tensor t = View(DType::kF32, {5, 3});
  absl::StatusOr<Tensor> r = t.Rows(4, 2);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Msg(r.status()), "tensor: rows [4, 6) outside [0, 5)");
  r = t.Rows(0, 6);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Msg(r.status()), "tensor: rows [0, 6) outside [0, 5)");
  EXPECT_EQ(t.Rows(6, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Rows(-1, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Rows(1, -1).status().code(), absl::StatusCode::kOutOfRange);
  // start + count past int64 must not wrap into range.
  r = t.Rows(2, std::numeric_limits<int64_t>::max());
  ASSERT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Msg(r.status()), "tensor: rows [2, 9223372036854775809) outside [0, 5)");
  EXPECT_EQ(t.Rows(std::numeric_limits<int64_t>::max(), 1).status().code(),
            absl::StatusCode::kOutOfRange);

  const Tensor scalar = View(DType::kF32, {});
  EXPECT_EQ(scalar.Rows(0, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TensorTest, ReshapeKeepsTheDataAndNeedsEqualNumel) {
  const Tensor t = View(DType::kBF16, {6, 4});
  absl::StatusOr<Tensor> r = t.Reshape({24});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data(), t.data());
  EXPECT_EQ(r->shape(), (Shape{24}));
  EXPECT_TRUE(t.Reshape({2, 3, 4}).ok());

  r = t.Reshape({5, 5});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(r.status()), "tensor: cannot reshape [6, 4] (24 elements) to [5, 5] (25)");
  EXPECT_EQ(t.Reshape({23}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Reshape({25}).status().code(), absl::StatusCode::kInvalidArgument);
  // Negative extents whose product is 24 are still not a shape.
  r = t.Reshape({-4, -6});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(r.status()), HasSubstr("negative extent"));
  // An empty tensor does not reshape into a shape whose numel wraps to 0.
  const Tensor empty = View(DType::kU8, {0});
  EXPECT_TRUE(empty.Reshape({3, 0}).ok());
  EXPECT_EQ(empty.Reshape({int64_t{1} << 32, int64_t{1} << 32}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TensorTest, OverlapsOnTheSameBuffer) {
  const Tensor all = View(DType::kF32, {4, 4});
  EXPECT_TRUE(all.Overlaps(all)) << "a view overlaps itself";
  const Tensor same = View(DType::kF32, {4, 4});
  EXPECT_TRUE(all.Overlaps(same));

  // Shifted views: rows [0, 3) and [1, 4).
  const Tensor a = *all.Rows(0, 3);
  const Tensor b = *all.Rows(1, 3);
  EXPECT_TRUE(a.Overlaps(b));
  EXPECT_TRUE(b.Overlaps(a));

  // Partial overlap by a single byte, across dtypes: f32[2] covers bytes [0, 8),
  // u8[4] at offset 7 covers [7, 11).
  const Tensor f = View(DType::kF32, {2});
  const Tensor u = View(DType::kU8, {4}, 7);
  EXPECT_TRUE(f.Overlaps(u));
  EXPECT_TRUE(u.Overlaps(f));

  // One view inside another.
  const Tensor inner = View(DType::kBF16, {2}, 20);
  EXPECT_TRUE(all.Overlaps(inner));
  EXPECT_TRUE(inner.Overlaps(all));
}

TEST_F(TensorTest, AdjacentViewsDoNotOverlap) {
  const Tensor all = View(DType::kF32, {4, 4});
  const Tensor top = *all.Rows(0, 2);
  const Tensor bottom = *all.Rows(2, 2);
  EXPECT_FALSE(top.Overlaps(bottom));
  EXPECT_FALSE(bottom.Overlaps(top));
  const Tensor f = View(DType::kF32, {2});
  const Tensor u = View(DType::kU8, {4}, 8);
  EXPECT_FALSE(f.Overlaps(u));
  EXPECT_FALSE(u.Overlaps(f));
}

TEST_F(TensorTest, ZeroSizeViewsOverlapNothing) {
  const Tensor all = View(DType::kF32, {4, 4});
  const Tensor empty_inside = View(DType::kF32, {0, 4}, 16);
  EXPECT_FALSE(all.Overlaps(empty_inside));
  EXPECT_FALSE(empty_inside.Overlaps(all));
  EXPECT_FALSE(empty_inside.Overlaps(empty_inside));
}

TEST_F(TensorTest, ViewsOnDifferentDevicesDoNotOverlap) {
  // The same address on two devices is two different places.
  float host[8];
  const Tensor cpu = Tensor::Wrap(host, Device::Cpu(), DType::kF32, {8});
  const Tensor cuda0 = Tensor::Wrap(host, Device::Cuda(0), DType::kF32, {8});
  const Tensor cuda1 = Tensor::Wrap(host, Device::Cuda(1), DType::kF32, {8});
  const Tensor xpu0 = Tensor::Wrap(host, Device::Xpu(0), DType::kF32, {8});
  EXPECT_FALSE(cpu.Overlaps(cuda0));
  EXPECT_FALSE(cuda0.Overlaps(cuda1));
  EXPECT_FALSE(cuda0.Overlaps(xpu0));
  EXPECT_TRUE(cuda0.Overlaps(Tensor::Wrap(host + 7, Device::Cuda(0), DType::kF32, {1})));
}

TEST(TensorDeviceTest, ViewsOfABufferCarryItsDevice) {
  testing::FakeBackend backend(Device::Cuda(1));
  Allocator allocator(&backend);
  auto buffer = allocator.Allocate(16);
  ASSERT_TRUE(buffer.ok());
  EXPECT_EQ((*buffer)->device(), Device::Cuda(1));
  absl::StatusOr<Tensor> t = Tensor::OnBuffer(**buffer, DType::kI32, {4});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->device(), Device::Cuda(1));
  EXPECT_EQ(t->ToString(), "i32[4] on cuda:1");
}

}  // namespace
}  // namespace moe
