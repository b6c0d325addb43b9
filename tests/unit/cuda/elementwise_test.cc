// The CUDA Add, Cast, ScaleRows and SwiGlu against the CPU backend, bit for bit: random inputs,
// odd sizes, both dtypes, leading dims past the row length (whose padding must stay untouched),
// unaligned pointers (the scalar path) and in-place use. Arithmetic that makes a NaN may give
// another NaN encoding on the GPU (see elementwise.h), so the special-value cases accept any NaN
// for any NaN; conversions are exact for every bit pattern. Without a CUDA device the GPU cases
// are skipped with the reason.
#include "kernels/cuda/elementwise.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
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

using ::moe::cuda::testing::Bytes;
using ::moe::cuda::testing::DeviceBuffer;
using ::moe::cuda::testing::Encode;
using ::moe::cuda::testing::ExpectSameBits;
using ::moe::cuda::testing::NoDeviceReason;
using ::moe::cuda::testing::RandomValues;
using ::moe::cuda::testing::SpecialValues;

class CudaElementwiseTest : public ::moe::cuda::testing::CudaOpTest {
 protected:

  // a + b on both backends; `offset` bytes misalign the device buffers; in_place writes a.
  void CheckAdd(const Bytes& a, const Bytes& b, DType dtype, size_t offset, bool in_place,
                bool any_nan) {
    const int64_t n = static_cast<int64_t>(a.size()) / DTypeSize(dtype);
    SCOPED_TRACE(::testing::Message() << "add n=" << n << " dtype=" << DTypeName(dtype)
                                      << " offset=" << offset << " in_place=" << in_place);
    Bytes want = in_place ? a : Bytes(a.size(), 0x7b);
    AddArgs args;
    args.n = n;
    args.dtype = dtype;
    args.a = in_place ? want.data() : a.data();
    args.b = b.data();
    args.out = want.data();
    ASSERT_TRUE(cpu_->Add(args).ok());

    DeviceBuffer da(a, offset), db(b, offset), dout(Bytes(a.size(), 0x7b), offset);
    args.a = da.get();
    args.b = db.get();
    args.out = in_place ? da.get() : dout.get();
    ASSERT_TRUE(LaunchAdd(args, stream_).ok());
    Sync();
    ExpectSameBits(in_place ? da.ToHost() : dout.ToHost(), want, dtype, any_nan);
  }

  void CheckCast(const Bytes& src, DType from, DType to, size_t offset) {
    const int64_t n = static_cast<int64_t>(src.size()) / DTypeSize(from);
    SCOPED_TRACE(::testing::Message() << "cast n=" << n << " " << DTypeName(from) << " -> "
                                      << DTypeName(to) << " offset=" << offset);
    Bytes want(n * DTypeSize(to), 0x7b);
    CastArgs args;
    args.n = n;
    args.src = src.data();
    args.src_dtype = from;
    args.dst = want.data();
    args.dst_dtype = to;
    ASSERT_TRUE(cpu_->Cast(args).ok());

    DeviceBuffer dsrc(src, offset), ddst(Bytes(want.size(), 0x7b), offset);
    args.src = dsrc.get();
    args.dst = ddst.get();
    ASSERT_TRUE(LaunchCast(args, stream_).ok());
    Sync();
    ExpectSameBits(ddst.ToHost(), want, to);
  }

};

TEST_F(CudaElementwiseTest, AddRandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {1, 7, 8, 9, 1000, 65537, (1 << 20) + 3}) {
      const Bytes a = RandomValues(n, dtype, rng, -8.0f, 8.0f);
      const Bytes b = RandomValues(n, dtype, rng, -8.0f, 8.0f);
      for (size_t offset : {size_t{0}, DTypeSize(dtype) == 4 ? size_t{4} : size_t{2}}) {
        CheckAdd(a, b, dtype, offset, /*in_place=*/false, /*any_nan=*/false);
      }
      CheckAdd(a, b, dtype, 0, /*in_place=*/true, /*any_nan=*/false);
    }
  }
}

TEST_F(CudaElementwiseTest, AddSpecialValues) {
  const std::vector<float> s = SpecialValues();
  std::vector<float> a, b;
  for (float x : s) {
    for (float y : s) {
      a.push_back(x);
      b.push_back(y);
    }
  }
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    CheckAdd(Encode(a, dtype), Encode(b, dtype), dtype, 0, false, /*any_nan=*/true);
  }
}

TEST_F(CudaElementwiseTest, CastEveryPairMatchesCpuBitForBit) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const DType kTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  // Sources: every 16-bit pattern (NaNs, subnormals, infinities included); for f32 random bit
  // patterns, the special values and random values in the f16 range.
  Bytes all16(2 << 16);
  for (uint32_t i = 0; i < (1u << 16); ++i) {
    const uint16_t u = static_cast<uint16_t>(i);
    std::memcpy(all16.data() + 2 * i, &u, 2);
  }
  Bytes f32 = RandomValues(100003, DType::kF32, rng, -70000.0f, 70000.0f);
  {
    std::uniform_int_distribution<uint32_t> bits;
    for (int i = 0; i < 200001; ++i) {
      const uint32_t u = bits(rng);
      f32.insert(f32.end(), reinterpret_cast<const uint8_t*>(&u),
                 reinterpret_cast<const uint8_t*>(&u) + 4);
    }
    const Bytes special = Encode(SpecialValues(), DType::kF32);
    f32.insert(f32.end(), special.begin(), special.end());
    // Tiny values around the f16 subnormal steps.
    const Bytes tiny = RandomValues(50001, DType::kF32, rng, -1e-4f, 1e-4f);
    f32.insert(f32.end(), tiny.begin(), tiny.end());
  }
  for (DType from : kTypes) {
    const Bytes& src = from == DType::kF32 ? f32 : all16;
    for (DType to : kTypes) {
      CheckCast(src, from, to, 0);
      CheckCast(src, from, to, 4);  // the scalar path
      // Odd lengths: a vector body and a tail.
      CheckCast(Bytes(src.begin(), src.begin() + 13 * DTypeSize(from)), from, to, 0);
    }
  }
}

TEST_F(CudaElementwiseTest, CastInPlaceSameDtypeIsANoOp) {
  const Bytes data = Encode({1.0f, 2.0f, -3.5f}, DType::kF32);
  DeviceBuffer d(data);
  CastArgs args;
  args.n = 3;
  args.src = d.get();
  args.dst = d.get();
  ASSERT_TRUE(LaunchCast(args, stream_).ok());
  Sync();
  EXPECT_EQ(d.ToHost(), data);
}

struct RowsCase {
  int64_t rows;
  int64_t cols;
  int64_t pad;  // ld = cols + pad (elements)
};

TEST_F(CudaElementwiseTest, ScaleRowsMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (RowsCase c : {RowsCase{1, 1, 0}, RowsCase{3, 7, 1}, RowsCase{5, 64, 8},
                       RowsCase{17, 1003, 21}, RowsCase{300, 2048, 0}, RowsCase{70000, 9, 7}}) {
      for (bool sigmoid : {false, true}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "scale_rows rows=" << c.rows << " cols=" << c.cols
                                            << " pad=" << c.pad << " dtype=" << DTypeName(dtype)
                                            << " sigmoid=" << sigmoid << " in_place=" << in_place);
          const int64_t ld = c.cols + c.pad;
          const Bytes src = RandomValues(c.rows * ld, dtype, rng, -4.0f, 4.0f);
          // Scales across the whole exp range, past both clamps.
          const Bytes scale = RandomValues(c.rows, DType::kF32, rng, -120.0f, 120.0f);
          Bytes want = in_place ? src : Bytes(src.size(), 0x7b);
          ScaleRowsArgs args;
          args.rows = c.rows;
          args.cols = c.cols;
          args.dtype = dtype;
          args.src = in_place ? want.data() : src.data();
          args.src_ld = ld;
          args.scale = reinterpret_cast<const float*>(scale.data());
          args.sigmoid_of_scale = sigmoid;
          args.dst = want.data();
          args.dst_ld = ld;
          ASSERT_TRUE(cpu_->ScaleRows(args).ok());

          DeviceBuffer dsrc(src), dscale(scale), ddst(Bytes(src.size(), 0x7b));
          args.src = dsrc.get();
          args.scale = static_cast<const float*>(dscale.get());
          args.dst = in_place ? dsrc.get() : ddst.get();
          ASSERT_TRUE(LaunchScaleRows(args, stream_).ok());
          Sync();
          ExpectSameBits(in_place ? dsrc.ToHost() : ddst.ToHost(), want, dtype);
        }
      }
    }
  }
}

TEST_F(CudaElementwiseTest, ScaleRowsSpecialScales) {
  // One row per special scale (sigmoid of it, too), each row the special values.
  const std::vector<float> s = SpecialValues();
  const int64_t rows = static_cast<int64_t>(s.size());
  const int64_t cols = rows;
  std::vector<float> x;
  for (int64_t r = 0; r < rows; ++r) x.insert(x.end(), s.begin(), s.end());
  const Bytes scale = Encode(s, DType::kF32);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (bool sigmoid : {false, true}) {
      const Bytes src = Encode(x, dtype);
      Bytes want(src.size(), 0x7b);
      ScaleRowsArgs args;
      args.rows = rows;
      args.cols = cols;
      args.dtype = dtype;
      args.src = src.data();
      args.src_ld = cols;
      args.scale = reinterpret_cast<const float*>(scale.data());
      args.sigmoid_of_scale = sigmoid;
      args.dst = want.data();
      args.dst_ld = cols;
      ASSERT_TRUE(cpu_->ScaleRows(args).ok());
      DeviceBuffer dsrc(src), dscale(scale), ddst(Bytes(src.size(), 0x7b));
      args.src = dsrc.get();
      args.scale = static_cast<const float*>(dscale.get());
      args.dst = ddst.get();
      ASSERT_TRUE(LaunchScaleRows(args, stream_).ok());
      Sync();
      ExpectSameBits(ddst.ToHost(), want, dtype, /*any_nan=*/true);
    }
  }
}

class CudaSwiGluTest : public CudaElementwiseTest {
 protected:
  // gate_up [rows, ld] with ld >= 2 * inter; out [rows, out_ld].
  void Check(const Bytes& gate_up, int64_t rows, int64_t inter, int64_t ld, int64_t out_ld,
             DType dtype, size_t offset, bool any_nan) {
    SCOPED_TRACE(::testing::Message()
                 << "swiglu rows=" << rows << " inter=" << inter << " ld=" << ld
                 << " out_ld=" << out_ld << " dtype=" << DTypeName(dtype) << " offset=" << offset);
    Bytes want(rows * out_ld * DTypeSize(dtype), 0x7b);
    SwiGluArgs args;
    args.rows = rows;
    args.inter = inter;
    args.dtype = dtype;
    args.gate_up = gate_up.data();
    args.gate_up_ld = ld;
    args.out = want.data();
    args.out_ld = out_ld;
    ASSERT_TRUE(cpu_->SwiGlu(args).ok());
    DeviceBuffer din(gate_up, offset), dout(Bytes(want.size(), 0x7b), offset);
    args.gate_up = din.get();
    args.out = dout.get();
    ASSERT_TRUE(LaunchSwiGlu(args, stream_).ok());
    Sync();
    ExpectSameBits(dout.ToHost(), want, dtype, any_nan);
  }
};

TEST_F(CudaSwiGluTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (RowsCase c : {RowsCase{1, 1, 0}, RowsCase{3, 7, 3}, RowsCase{4, 8, 0},
                       RowsCase{9, 768, 16}, RowsCase{33, 1407, 5}, RowsCase{257, 2048, 0}}) {
      const int64_t ld = 2 * c.cols + c.pad;
      const int64_t out_ld = c.cols + c.pad;
      const Bytes gate_up = RandomValues(c.rows * ld, dtype, rng, -12.0f, 12.0f);
      Check(gate_up, c.rows, c.cols, ld, out_ld, dtype, 0, false);
      Check(gate_up, c.rows, c.cols, ld, out_ld, dtype, DTypeSize(dtype), false);
    }
  }
}

// Every bf16 gate bit pattern (times a few up values); the f32 gates over the whole exp range
// and the special values.
TEST_F(CudaSwiGluTest, EveryBf16GateAndWideF32Gates) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const int64_t inter = 1 << 16;
  Bytes gate_up(2 * inter * 2);
  const Bytes up = RandomValues(inter, DType::kBF16, rng, -3.0f, 3.0f);
  for (uint32_t i = 0; i < (1u << 16); ++i) {
    const uint16_t u = static_cast<uint16_t>(i);
    std::memcpy(gate_up.data() + 2 * i, &u, 2);
  }
  std::memcpy(gate_up.data() + 2 * inter, up.data(), up.size());
  Check(gate_up, 1, inter, 2 * inter, inter, DType::kBF16, 0, /*any_nan=*/true);

  std::vector<float> g = SpecialValues();
  const Bytes wide = RandomValues(100000, DType::kF32, rng, -110.0f, 110.0f);
  for (size_t i = 0; i < wide.size() / 4; ++i) {
    float f;
    std::memcpy(&f, wide.data() + 4 * i, 4);
    g.push_back(f);
  }
  const int64_t n = static_cast<int64_t>(g.size());
  std::vector<float> f32(2 * n);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    f32[i] = g[i];
    f32[n + i] = dist(rng);
  }
  Check(Encode(f32, DType::kF32), 1, n, 2 * n, n, DType::kF32, 0, /*any_nan=*/true);
}

}  // namespace
}  // namespace moe::cuda
