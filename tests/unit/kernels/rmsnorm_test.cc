// RMSNorm against float64: f32 plain; bf16 with Hugging Face's two roundings,
// normed = bf16(x / rms), out = bf16(w * normed). Validation at the exact limits.
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe {
namespace {

using ::moe::testing::Decode;
using ::moe::testing::Encode;
using ::moe::testing::MaxRelError;
using ::moe::testing::OpTol;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::moe::testing::TestSeed;

constexpr float kEps = 1e-6f;

RmsNormArgs MakeArgs(DType dtype, int64_t rows, int64_t cols, const void* x, int64_t x_ld,
                     const void* w, void* out, int64_t out_ld) {
  RmsNormArgs a;
  a.rows = rows;
  a.cols = cols;
  a.dtype = dtype;
  a.x = x;
  a.x_ld = x_ld;
  a.weight = w;
  a.eps = kEps;
  a.out = out;
  a.out_ld = out_ld;
  return a;
}

class RmsNormTest : public ::testing::Test {
 protected:
  std::vector<uint8_t> Run(Backend& backend, DType dtype, int64_t rows, int64_t cols,
                           const std::vector<uint8_t>& x, int64_t x_ld,
                           const std::vector<uint8_t>& w, int64_t out_ld) {
    std::vector<uint8_t> out = Encode(std::vector<double>(rows * out_ld, 77.0), dtype);
    const absl::Status s =
        backend.RmsNorm(MakeArgs(dtype, rows, cols, x.data(), x_ld, w.data(), out.data(), out_ld));
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(RmsNormTest, MatchesFloat64Reference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  int64_t bf16_elems = 0, bf16_misses = 0;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [rows, cols, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 0}, {3, 7, 2}, {5, 64, 0}, {17, 1000, 3}, {64, 4096, 0}, {9, 4099, 1}}) {
      SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " rows=", rows, " cols=", cols));
      const int64_t x_ld = cols + pad, out_ld = cols + 2 * pad;
      const std::vector<double> x = RoundTo(RandomUniform(rows * x_ld, rng, -4.0, 4.0), dtype);
      const std::vector<double> w = RoundTo(RandomUniform(cols, rng, 0.5, 1.5), dtype);
      const std::vector<uint8_t> xr = Encode(x, dtype), wr = Encode(w, dtype);
      const std::vector<uint8_t> out1 = Run(one_, dtype, rows, cols, xr, x_ld, wr, out_ld);
      const std::vector<uint8_t> out2 = Run(two_, dtype, rows, cols, xr, x_ld, wr, out_ld);
      ASSERT_EQ(out1, out2);
      ASSERT_EQ(out2, Run(two_, dtype, rows, cols, xr, x_ld, wr, out_ld));
      const std::vector<double> all = Decode(out1.data(), rows * out_ld, dtype);
      std::vector<double> got, want;
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < cols; ++j) ss += x[r * x_ld + j] * x[r * x_ld + j];
        const double inv = 1.0 / std::sqrt(ss / cols + static_cast<double>(kEps));
        for (int64_t j = 0; j < out_ld; ++j) {
          const double o = all[r * out_ld + j];
          if (j >= cols) {
            ASSERT_EQ(o, 77.0) << "padding written";
            continue;
          }
          got.push_back(o);
          if (dtype == DType::kF32) {
            want.push_back(w[j] * x[r * x_ld + j] * inv);
            continue;
          }
          const double normed = RoundToBf16(static_cast<float>(x[r * x_ld + j] * inv));
          const double two = RoundToBf16(static_cast<float>(w[j] * normed));
          want.push_back(two);
          ++bf16_elems;
          if (o != two) ++bf16_misses;
        }
      }
      EXPECT_LE(MaxRelError(got, want), OpTol(dtype));
    }
  }
  // HF's rounding order bit for bit, but for the rare fp32 rms on a bf16 rounding boundary.
  EXPECT_LE(bf16_misses, bf16_elems / 1000 + 2);
}

TEST_F(RmsNormTest, InPlaceEqualsOutOfPlace) {
  std::mt19937_64 rng(TestSeed());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const int64_t rows = 33, cols = 515, ld = 520;
    const std::vector<double> x = RoundTo(RandomUniform(rows * ld, rng), dtype);
    const std::vector<uint8_t> w = Encode(RoundTo(RandomUniform(cols, rng), dtype), dtype);
    std::vector<uint8_t> buf = Encode(x, dtype);
    const std::vector<uint8_t> out = Run(two_, dtype, rows, cols, buf, ld, w, ld);
    ASSERT_TRUE(
        two_.RmsNorm(MakeArgs(dtype, rows, cols, buf.data(), ld, w.data(), buf.data(), ld)).ok());
    const std::vector<double> a = Decode(out.data(), rows * ld, dtype);
    const std::vector<double> b = Decode(buf.data(), rows * ld, dtype);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < ld; ++j) {
        ASSERT_EQ(b[r * ld + j], j < cols ? a[r * ld + j] : x[r * ld + j]) << r << "," << j;
      }
    }
  }
}

// Grouped rows (qk-norm over the heads of every token of a fused qkv buffer) give the bits of
// one call per group, leave the rest of the buffer alone, and group_ld is checked.
TEST_F(RmsNormTest, GroupedRowsEqualOneCallPerGroup) {
  std::mt19937_64 rng(TestSeed());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const int64_t groups = 5, per = 3, cols = 24, group_ld = 4 * cols + 8;
    const std::vector<double> x = RoundTo(RandomUniform(groups * group_ld, rng), dtype);
    const std::vector<uint8_t> w = Encode(RoundTo(RandomUniform(cols, rng), dtype), dtype);
    std::vector<uint8_t> grouped = Encode(x, dtype), single = grouped;
    RmsNormArgs a = MakeArgs(dtype, groups * per, cols, grouped.data(), cols, w.data(),
                             grouped.data(), cols);
    a.rows_per_group = per;
    a.group_ld = group_ld;
    ASSERT_TRUE(two_.RmsNorm(a).ok());
    const int64_t es = DTypeSize(dtype);
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* base = single.data() + g * group_ld * es;
      ASSERT_TRUE(two_.RmsNorm(MakeArgs(dtype, per, cols, base, cols, w.data(), base, cols)).ok());
    }
    EXPECT_EQ(grouped, single);
    a.group_ld = per * cols - 1;
    const absl::Status s = two_.RmsNorm(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("group_ld="), absl::string_view::npos) << s;
  }
}

TEST_F(RmsNormTest, ZeroRowGivesZeros) {
  const std::vector<float> x(10, 0.0f), w(10, 2.0f);
  std::vector<float> out(10, 5.0f);
  ASSERT_TRUE(
      one_.RmsNorm(MakeArgs(DType::kF32, 1, 10, x.data(), 10, w.data(), out.data(), 10)).ok());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST_F(RmsNormTest, ValidationAtTheLimits) {
  std::vector<float> x(64, 1.0f), w(8, 1.0f), out(64);
  auto args = [&] { return MakeArgs(DType::kF32, 4, 8, x.data(), 8, w.data(), out.data(), 8); };
  EXPECT_TRUE(one_.RmsNorm(args()).ok());
  RmsNormArgs a = args();
  a.rows = -1;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: rows=-1 is negative");
  a = args();
  a.cols = -1;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: cols=-1 is negative");
  a = args();
  a.x_ld = 7;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: x_ld=7 is less than the row length 8");
  a.x_ld = 9;
  EXPECT_TRUE(one_.RmsNorm(a).ok());
  a = args();
  a.out_ld = 7;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: out_ld=7 is less than the row length 8");
  a = args();
  a.eps = -1e-30f;
  EXPECT_EQ(one_.RmsNorm(a).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(one_.RmsNorm(a).message().find("must be finite and >= 0"), absl::string_view::npos);
  a.eps = 0.0f;
  EXPECT_TRUE(one_.RmsNorm(a).ok());
  a.eps = INFINITY;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: eps=inf must be finite and >= 0");
  a.eps = NAN;
  EXPECT_EQ(one_.RmsNorm(a).code(), absl::StatusCode::kInvalidArgument);
  a = args();
  a.dtype = DType::kF16;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: dtype=f16 (supported: f32, bf16)");
  EXPECT_EQ(one_.RmsNorm(a).code(), absl::StatusCode::kUnimplemented);
  a = args();
  a.out = x.data();
  a.out_ld = 9;
  a.rows = 2;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: in place with x_ld=8 != out_ld=9");
  a.out_ld = 8;
  EXPECT_TRUE(one_.RmsNorm(a).ok());
  a = args();
  a.weight = nullptr;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: weight is null");
  a.rows = 0;
  EXPECT_TRUE(one_.RmsNorm(a).ok());  // nothing to compute: pointers unused
  a = args();
  a.x = nullptr;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: x is null");
  a = args();
  a.out = nullptr;
  EXPECT_EQ(one_.RmsNorm(a).message(), "rmsnorm: out is null");
}

}  // namespace
}  // namespace moe
