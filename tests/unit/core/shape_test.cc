#include "engine/core/shape.h"

#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(ShapeTest, RankDimsAndNumel) {
  const Shape s{4, 3, 2};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.dim(0), 4);
  EXPECT_EQ(s.dim(2), 2);
  EXPECT_EQ(s.dim(-1), 2);
  EXPECT_EQ(s.dim(-3), 4);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s.ToString(), "[4, 3, 2]");
}

TEST(ShapeTest, ScalarHasRankZeroAndOneElement) {
  const Shape s;
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.ToString(), "[]");
  EXPECT_EQ(s, Shape{});
}

TEST(ShapeTest, ZeroExtentHasNoElements) {
  EXPECT_EQ((Shape{0}).numel(), 0);
  EXPECT_EQ((Shape{7, 0, 5}).numel(), 0);
  EXPECT_EQ((Shape{7, 0, 5}).ToString(), "[7, 0, 5]");
}

TEST(ShapeTest, EqualityAndConstructionFromIterators) {
  const std::vector<int64_t> dims = {2, 2048};
  const Shape a(dims.begin(), dims.end());
  EXPECT_EQ(a, (Shape{2, 2048}));
  EXPECT_NE(a, (Shape{2048, 2}));
  EXPECT_NE(a, (Shape{2, 2048, 1}));
  EXPECT_EQ(std::vector<int64_t>(a.begin(), a.end()), dims);
}

TEST(ShapeTest, LargeExtentsMultiplyIn64Bits) {
  EXPECT_EQ((Shape{1 << 20, 1 << 20, 4}).numel(), int64_t{1} << 42);
}

}  // namespace
}  // namespace moe
