// The CUDA RmsNorm and Rope against the CPU backend, bit for bit: random inputs, odd sizes
// (rows shorter than, equal to and longer than the 2048-element staging chunk), both dtypes,
// leading dims past the row length (whose padding must stay untouched), unaligned pointers,
// in-place use, both rope styles, a rotary part shorter than the head and x pointing into a
// head (MLA's q_pe). Rope's position check: the CPU backend's message, and x left untouched.
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/norm_rope.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "tests/testing/test_util.h"
#include "tests/unit/cuda/op_test_util.h"

namespace moe::cuda {
namespace {

using ::moe::cuda::testing::AsBytes;
using ::moe::cuda::testing::Bytes;
using ::moe::cuda::testing::DeviceBuffer;
using ::moe::cuda::testing::Encode;
using ::moe::cuda::testing::ExpectSameBits;
using ::moe::cuda::testing::NoDeviceReason;
using ::moe::cuda::testing::RandomValues;
using ::moe::cuda::testing::SpecialValues;

class CudaNormRopeTest : public ::moe::cuda::testing::CudaOpTest {
};

// ---- RmsNorm -----------------------------------------------------------------------------

class CudaRmsNormTest : public CudaNormRopeTest {
 protected:
  // x [rows, x_ld], out [rows, out_ld] (out_ld = x_ld in place); `offset` bytes misalign x, w
  // and out on the device.
  void Check(const Bytes& x, const Bytes& w, int64_t rows, int64_t cols, int64_t x_ld,
             int64_t out_ld, float eps, DType dtype, bool in_place, size_t offset,
             bool any_nan = false) {
    SCOPED_TRACE(::testing::Message()
                 << "rmsnorm rows=" << rows << " cols=" << cols << " x_ld=" << x_ld
                 << " out_ld=" << out_ld << " eps=" << eps << " dtype=" << DTypeName(dtype)
                 << " in_place=" << in_place << " offset=" << offset);
    const size_t elem = DTypeSize(dtype);
    Bytes want = in_place ? x : Bytes(rows * out_ld * elem, 0x7b);
    RmsNormArgs args;
    args.rows = rows;
    args.cols = cols;
    args.dtype = dtype;
    args.x = in_place ? want.data() : x.data();
    args.x_ld = x_ld;
    args.weight = w.data();
    args.eps = eps;
    args.out = want.data();
    args.out_ld = in_place ? x_ld : out_ld;
    const absl::Status cpu = cpu_->RmsNorm(args);
    ASSERT_TRUE(cpu.ok()) << cpu;

    DeviceBuffer dx(x, offset), dw(w, offset), dout(Bytes(want.size(), 0x7b), offset);
    args.x = dx.get();
    args.weight = dw.get();
    args.out = in_place ? dx.get() : dout.get();
    ASSERT_TRUE(LaunchRmsNorm(args, stream_).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    ExpectSameBits(in_place ? dx.ToHost() : dout.ToHost(), want, dtype, any_nan);
  }
};

TEST_F(CudaRmsNormTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t rows, cols, pad;
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Case c : {Case{1, 1, 0}, Case{2, 7, 1}, Case{3, 8, 0}, Case{5, 9, 7}, Case{4, 64, 8},
                   Case{3, 2047, 1}, Case{2, 2048, 0}, Case{7, 2049, 15}, Case{3, 4100, 4},
                   Case{33, 7168, 8}, Case{1000, 128, 0}, Case{2, 20000, 3}}) {
      const int64_t ld = c.cols + c.pad;
      // Values of several magnitudes, so the lane sums round differently by order.
      const float scale = static_cast<float>(1 << (rng() % 8));
      const Bytes x = RandomValues(c.rows * ld, dtype, rng, -scale, scale);
      const Bytes w = RandomValues(c.cols, dtype, rng, -2.0f, 2.0f);
      for (float eps : {1e-6f, 0.0f, 0.25f}) {
        Check(x, w, c.rows, c.cols, ld, ld + 3, eps, dtype, /*in_place=*/false, 0);
      }
      Check(x, w, c.rows, c.cols, ld, ld, 1e-5f, dtype, /*in_place=*/true, 0);
      Check(x, w, c.rows, c.cols, ld, ld, 1e-5f, dtype, /*in_place=*/false, DTypeSize(dtype));
    }
  }
}

// Rows of special values (NaN, inf: NaN anywhere in the row), huge values (the sum overflows:
// inv = 0), tiny ones (subnormal squares), and zeros (with eps = 0: inf * 0 = NaN).
TEST_F(CudaRmsNormTest, SpecialRows) {
  const std::vector<float> s = SpecialValues();
  const int64_t cols = static_cast<int64_t>(s.size());
  std::vector<float> rows = s;
  for (int64_t j = 0; j < cols; ++j) rows.push_back(j % 2 ? 3e38f : -2e38f);
  for (int64_t j = 0; j < cols; ++j) rows.push_back(j % 3 ? 1e-40f : -3e-42f);
  for (int64_t j = 0; j < cols; ++j) rows.push_back(0.0f);
  for (int64_t j = 0; j < cols; ++j) rows.push_back(j == 5 ? 1.0f : 0.0f);
  const int64_t n = static_cast<int64_t>(rows.size()) / cols;
  std::vector<float> w(cols, 1.5f);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (float eps : {0.0f, 1e-6f}) {
      Check(Encode(rows, dtype), Encode(w, dtype), n, cols, cols, cols, eps, dtype, false, 0,
            /*any_nan=*/true);
    }
  }
}

// ---- Rope --------------------------------------------------------------------------------

struct RopeCase {
  int64_t rows, heads, head_dim, rotary_dim;
  int64_t x_offset;  // elements before x in the buffer (x may point into a head)
  int64_t pad;       // ld = (heads - 1) * head_dim + rotary_dim + pad
};

class CudaRopeTest : public CudaNormRopeTest {
 protected:
  struct Inputs {
    Bytes x;  // x_offset + rows * ld elements
    std::vector<int32_t> positions;
    std::vector<float> cos, sin;
    int64_t max_positions = 0;
    int64_t ld = 0;
  };

  Inputs Make(const RopeCase& c, DType dtype, std::mt19937_64& rng) {
    Inputs in;
    in.ld = (c.heads - 1) * c.head_dim + c.rotary_dim + c.pad;
    in.x = RandomValues(c.x_offset + c.rows * in.ld, dtype, rng, -4.0f, 4.0f);
    in.max_positions = 1 + static_cast<int64_t>(rng() % 300);
    const int64_t half = c.rotary_dim / 2;
    std::uniform_real_distribution<float> unit(-1.2f, 1.2f);
    in.cos.resize(in.max_positions * half);
    in.sin.resize(in.max_positions * half);
    for (float& v : in.cos) v = unit(rng);
    for (float& v : in.sin) v = unit(rng);
    in.positions.resize(c.rows);
    for (int32_t& p : in.positions) p = static_cast<int32_t>(rng() % in.max_positions);
    return in;
  }

  RopeArgs Args(const RopeCase& c, const Inputs& in, RopeStyle style, DType dtype) {
    RopeArgs args;
    args.rows = c.rows;
    args.heads = c.heads;
    args.head_dim = c.head_dim;
    args.rotary_dim = c.rotary_dim;
    args.style = style;
    args.dtype = dtype;
    args.ld = in.ld;
    args.max_positions = in.max_positions;
    return args;
  }

  // Runs both backends; expects the CPU's Status from FinishRope and the same x bits.
  void Check(const RopeCase& c, const Inputs& in, RopeStyle style, DType dtype, size_t offset) {
    SCOPED_TRACE(::testing::Message()
                 << "rope rows=" << c.rows << " heads=" << c.heads << " head_dim=" << c.head_dim
                 << " rotary_dim=" << c.rotary_dim << " x_offset=" << c.x_offset << " ld=" << in.ld
                 << " style=" << (style == RopeStyle::kHalf ? "half" : "interleaved")
                 << " dtype=" << DTypeName(dtype) << " offset=" << offset);
    const size_t elem = DTypeSize(dtype);
    RopeArgs args = Args(c, in, style, dtype);
    Bytes want = in.x;
    args.x = want.data() + c.x_offset * elem;
    args.positions = in.positions.data();
    args.cos = in.cos.data();
    args.sin = in.sin.data();
    const absl::Status cpu = cpu_->Rope(args);

    DeviceBuffer dx(in.x, offset), dpos(AsBytes(in.positions)), dcos(AsBytes(in.cos), offset),
        dsin(AsBytes(in.sin), offset), derr(Bytes(16, 0x5a));
    args.x = dx.as<uint8_t>() + c.x_offset * elem;
    args.positions = dpos.as<int32_t>();
    args.cos = dcos.as<float>();
    args.sin = dsin.as<float>();
    const absl::Status launch = LaunchRope(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    const absl::Status gpu = FinishRope(args, derr.as<uint64_t>(), stream_);
    EXPECT_EQ(gpu, cpu);
    ExpectSameBits(dx.ToHost(), want, dtype);
    if (!cpu.ok()) ExpectSameBits(dx.ToHost(), in.x, dtype);  // untouched
  }
};

TEST_F(CudaRopeTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const RopeCase cases[] = {
      {1, 1, 2, 2, 0, 0},        // one pair
      {3, 2, 10, 6, 0, 1},       // odd half, rotary part shorter than the head
      {5, 4, 64, 64, 0, 0},      // whole head
      {7, 3, 128, 64, 0, 5},     // partial rotary, padded ld
      {9, 16, 192, 64, 128, 0},  // MLA q_pe: x points 128 dims into each 192-dim head
      {4, 1, 64, 64, 3, 1},      // x off the vector alignment
      {300, 8, 128, 128, 0, 0},  // many rows
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
      for (const RopeCase& c : cases) {
        const Inputs in = Make(c, dtype, rng);
        Check(c, in, style, dtype, 0);
        Check(c, in, style, dtype, 4);  // the scalar path
      }
    }
  }
}

TEST_F(CudaRopeTest, BadPositionsAreReportedAndNothingIsWritten) {
  std::mt19937_64 rng(11);
  const RopeCase c{6, 2, 16, 16, 0, 0};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
      Inputs in = Make(c, dtype, rng);
      const int32_t max = static_cast<int32_t>(in.max_positions);
      // limit - 1 is fine; limit, -1 and the int32 extremes are not; the first bad row counts.
      for (std::vector<int32_t> positions :
           {std::vector<int32_t>{0, max - 1, 0, 0, max - 1, 0},
            std::vector<int32_t>{0, 1 % max, max, 0, -1, 0},
            std::vector<int32_t>{-1, 0, 0, 0, 0, max},
            std::vector<int32_t>{0, 0, 0, 0, 0, std::numeric_limits<int32_t>::min()},
            std::vector<int32_t>{0, std::numeric_limits<int32_t>::max(), 0, 0, 0, 0}}) {
        in.positions = positions;
        Check(c, in, style, dtype, 0);
      }
    }
  }
}

// Runs everywhere: the message needs no device.
TEST(CudaRopeDataErrorTest, MessageNamesRowPositionAndLimit) {
  RopeArgs args;
  args.max_positions = 8;
  const uint64_t none[2] = {~uint64_t{0}, 0};
  EXPECT_TRUE(RopeDataError(args, none).ok());
  const uint64_t bad[2] = {3, static_cast<uint64_t>(int64_t{-1})};
  EXPECT_EQ(RopeDataError(args, bad),
            absl::InvalidArgumentError("rope: positions[3]=-1 is outside [0, max_positions=8)"));
}

}  // namespace
}  // namespace moe::cuda
