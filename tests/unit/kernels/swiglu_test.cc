// SwiGLU against float64: f32 plain; bf16 with PyTorch's two roundings,
// s = bf16(silu(g)), out = bf16(s * u).
#include <cmath>
#include <cstdint>
#include <limits>
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

double Silu(double g) { return g / (1.0 + std::exp(-g)); }

// The fp32 formula's value where exp(-g) overflows fp32 (g < -88.72): g / inf = -0, as in
// PyTorch; elsewhere the float64 silu.
double SiluFp32Formula(double g) {
  return std::exp(-g) > std::numeric_limits<float>::max() ? -0.0 : Silu(g);
}

std::vector<uint8_t> RunSwiGlu(Backend& backend, DType dtype, int64_t rows, int64_t inter,
                               const std::vector<uint8_t>& gate_up, int64_t in_ld, int64_t out_ld) {
  std::vector<uint8_t> out = Encode(std::vector<double>(rows * out_ld, 77.0), dtype);
  SwiGluArgs a;
  a.rows = rows;
  a.inter = inter;
  a.dtype = dtype;
  a.gate_up = gate_up.data();
  a.gate_up_ld = in_ld;
  a.out = out.data();
  a.out_ld = out_ld;
  const absl::Status s = backend.SwiGlu(a);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

class SwiGluTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(SwiGluTest, MatchesFloat64Reference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  int64_t bf16_elems = 0, two_rounding_misses = 0, one_rounding_differs = 0;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [rows, inter, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 0}, {7, 13, 3}, {64, 256, 0}, {333, 1000, 5}, {16, 2048, 0}}) {
      SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " rows=", rows, " inter=", inter));
      const int64_t in_ld = 2 * inter + pad;
      const int64_t out_ld = inter + pad;
      const std::vector<double> x = RoundTo(RandomUniform(rows * in_ld, rng, -8.0, 8.0), dtype);
      const std::vector<uint8_t> raw = Encode(x, dtype);
      const std::vector<uint8_t> out1 = RunSwiGlu(one_, dtype, rows, inter, raw, in_ld, out_ld);
      const std::vector<uint8_t> out2 = RunSwiGlu(two_, dtype, rows, inter, raw, in_ld, out_ld);
      const std::vector<uint8_t> again = RunSwiGlu(two_, dtype, rows, inter, raw, in_ld, out_ld);
      ASSERT_EQ(out1, out2);
      ASSERT_EQ(out2, again);
      const std::vector<double> all = Decode(out1.data(), rows * out_ld, dtype);
      std::vector<double> got, want64;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < out_ld; ++j) {
          if (j >= inter) {
            ASSERT_EQ(all[r * out_ld + j], 77.0) << "padding written";
            continue;
          }
          const double g = x[r * in_ld + j];
          const double u = x[r * in_ld + inter + j];
          const double o = all[r * out_ld + j];
          got.push_back(o);
          if (dtype == DType::kF32) {
            want64.push_back(Silu(g) * u);
            continue;
          }
          // The two-rounding form from the float64 silu; the kernel's fp32 silu may round
          // to the other bf16 neighbour only when within ~2 fp32 ulp of a rounding boundary.
          const double s = RoundToBf16(static_cast<float>(Silu(g)));
          const double two = RoundToBf16(static_cast<float>(s * u));
          want64.push_back(two);
          ++bf16_elems;
          if (o != two) ++two_rounding_misses;
          if (RoundToBf16(static_cast<float>(Silu(g) * u)) != two) ++one_rounding_differs;
        }
      }
      EXPECT_LE(MaxRelError(got, want64), OpTol(dtype));
    }
  }
  // Bits equal the two-rounding reference (all but a handful of boundary cases), and the
  // test data would tell the one-rounding form apart.
  EXPECT_LE(two_rounding_misses, bf16_elems / 10000 + 2);
  EXPECT_GE(one_rounding_differs, bf16_elems / 10);
}

// Every bf16 gate value (up = 1, so out = bf16(silu(g))): exactly the two-rounding reference
// from the float64 silu (the fp32 silu never lands on the wrong side of a bf16 rounding
// boundary); -0 where exp(-g) overflows fp32, NaN for NaN and -inf gates (-inf / (1 + inf)),
// as in PyTorch.
TEST_F(SwiGluTest, EveryBf16GateValue) {
  constexpr int64_t kValues = 1 << 16;
  std::vector<uint16_t> in(2 * kValues), out(kValues);
  for (int64_t i = 0; i < kValues; ++i) {
    in[i] = static_cast<uint16_t>(i);
    in[kValues + i] = 0x3f80;  // 1.0
  }
  SwiGluArgs a;
  a.rows = 1;
  a.inter = kValues;
  a.dtype = DType::kBF16;
  a.gate_up = in.data();
  a.gate_up_ld = 2 * kValues;
  a.out = out.data();
  a.out_ld = kValues;
  ASSERT_TRUE(two_.SwiGlu(a).ok());
  for (int64_t i = 0; i < kValues; ++i) {
    const double g = Bf16ToFloat(bf16{static_cast<uint16_t>(i)});
    const float got = Bf16ToFloat(bf16{out[i]});
    if (std::isnan(g) || g == -std::numeric_limits<double>::infinity()) {
      EXPECT_TRUE(std::isnan(got)) << "g=" << g;
      continue;
    }
    const float want = RoundToBf16(static_cast<float>(SiluFp32Formula(g)));
    EXPECT_EQ(out[i], FloatToBf16(want).bits) << "g=" << g << " got " << got << " want " << want;
  }
}

TEST_F(SwiGluTest, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // gate | up, inter = 6.
  const std::vector<float> in = {0.0f, -100.0f, 100.0f, nan,  inf,  -inf,
                                 3.0f, 3.0f,    3.0f,   3.0f, 3.0f, 3.0f};
  std::vector<float> out(6);
  SwiGluArgs a;
  a.rows = 1;
  a.inter = 6;
  a.gate_up = in.data();
  a.gate_up_ld = 12;
  a.out = out.data();
  a.out_ld = 6;
  ASSERT_TRUE(one_.SwiGlu(a).ok());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);  // -100 / (1 + e^100) = -0 in fp32
  EXPECT_EQ(out[2], 300.0f);
  EXPECT_TRUE(std::isnan(out[3]));
  EXPECT_EQ(out[4], inf);
  EXPECT_TRUE(std::isnan(out[5]));  // -inf / (1 + inf), as in PyTorch
}

}  // namespace
}  // namespace moe
