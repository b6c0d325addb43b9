// ScaleRows, Add and Cast against float64 references and exact emulations of their one
// rounding; in-place use; odd and round sizes; bit identity across threads.
#include <cmath>
#include <cstdint>
#include <cstring>
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

class ElementwiseTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(ElementwiseTest, ScaleRows) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [rows, cols, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 0}, {3, 17, 2}, {64, 256, 0}, {513, 1000, 3}}) {
      for (bool sigmoid : {false, true}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " rows=", rows, " cols=", cols,
                                    sigmoid ? " sigmoid" : "", in_place ? " in place" : ""));
          const int64_t ld = cols + pad;
          const std::vector<double> x = RoundTo(RandomUniform(rows * ld, rng), dtype);
          std::vector<float> scale;
          for (double s : RandomUniform(rows, rng, -3.0, 3.0)) scale.push_back(s);
          std::vector<std::vector<uint8_t>> results;
          for (Backend* b : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
            std::vector<uint8_t> src = Encode(x, dtype);
            std::vector<uint8_t> dst = Encode(std::vector<double>(rows * ld, 77.0), dtype);
            ScaleRowsArgs a;
            a.rows = rows;
            a.cols = cols;
            a.dtype = dtype;
            a.src = src.data();
            a.src_ld = ld;
            a.scale = scale.data();
            a.sigmoid_of_scale = sigmoid;
            a.dst = in_place ? src.data() : dst.data();
            a.dst_ld = ld;
            ASSERT_TRUE(b->ScaleRows(a).ok());
            results.push_back(in_place ? src : dst);
          }
          ASSERT_EQ(results[0], results[1]);
          const std::vector<double> got = Decode(results[0].data(), rows * ld, dtype);
          std::vector<double> valid, want64, want_exact;
          for (int64_t r = 0; r < rows; ++r) {
            const double s = sigmoid ? 1.0 / (1.0 + std::exp(-double{scale[r]})) : scale[r];
            for (int64_t j = 0; j < ld; ++j) {
              const double v = got[r * ld + j];
              if (j >= cols) {
                ASSERT_EQ(v, in_place ? x[r * ld + j] : 77.0) << "padding written";
                continue;
              }
              valid.push_back(v);
              want64.push_back(x[r * ld + j] * s);
              want_exact.push_back(static_cast<float>(x[r * ld + j] * s));
            }
          }
          EXPECT_LE(MaxRelError(valid, want64), OpTol(dtype));
          // Without the sigmoid the scale is exact, so the bits are: fp32 product, one rounding.
          if (!sigmoid) {
            EXPECT_EQ(valid, RoundTo(want_exact, dtype));
          }
        }
      }
    }
  }
}

TEST_F(ElementwiseTest, Add) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {1, 7, 64, 1000, 65536, 300007}) {
      for (int alias : {0, 1, 2}) {  // out separate, out == a, out == b
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " n=", n, " alias=", alias));
        const std::vector<double> a = RoundTo(RandomUniform(n, rng), dtype);
        const std::vector<double> b = RoundTo(RandomUniform(n, rng), dtype);
        std::vector<std::vector<uint8_t>> results;
        for (Backend* be : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
          std::vector<uint8_t> ra = Encode(a, dtype), rb = Encode(b, dtype);
          std::vector<uint8_t> out(ra.size());
          AddArgs args;
          args.n = n;
          args.dtype = dtype;
          args.a = ra.data();
          args.b = rb.data();
          args.out = alias == 1 ? ra.data() : alias == 2 ? rb.data() : out.data();
          ASSERT_TRUE(be->Add(args).ok());
          results.push_back(alias == 1 ? ra : alias == 2 ? rb : out);
        }
        ASSERT_EQ(results[0], results[1]);
        const std::vector<double> got = Decode(results[0].data(), n, dtype);
        std::vector<double> want64(n), want_exact(n);
        for (int64_t i = 0; i < n; ++i) {
          want64[i] = a[i] + b[i];
          want_exact[i] = static_cast<float>(a[i] + b[i]);  // the correctly rounded fp32 sum
        }
        EXPECT_EQ(got, RoundTo(want_exact, dtype));
        EXPECT_LE(MaxRelError(got, want64), OpTol(dtype));
      }
    }
  }
}

// Raw storage of float values in any float dtype, through the reference conversions.
std::vector<uint8_t> Store(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * DTypeSize(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else if (t == DType::kBF16) {
      const bf16 h = FloatToBf16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    } else {
      const f16 h = FloatToF16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

std::vector<float> Load(const std::vector<uint8_t>& raw, DType t) {
  const size_t n = raw.size() / DTypeSize(t);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) {
      std::memcpy(&v[i], raw.data() + 4 * i, 4);
    } else if (t == DType::kBF16) {
      bf16 h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      v[i] = Bf16ToFloat(h);
    } else {
      f16 h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      v[i] = F16ToFloat(h);
    }
  }
  return v;
}

// Every pair of f32, bf16, f16: the bits of kernels/dtype.h's conversions (round to nearest
// even, NaN stays NaN, overflow to inf), on random values and on edge values.
TEST_F(ElementwiseTest, Cast) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> edge = {0.0f,
                             -0.0f,
                             1.0f,
                             -1.0f,
                             inf,
                             -inf,
                             65504.0f,
                             65520.0f,
                             1e-8f,
                             6e-5f,
                             3.4e38f,
                             -3.4e38f,
                             1.00390625f /* bf16 tie */,
                             1.01171875f,
                             1.0f + std::ldexp(1.0f, -11),
                             std::numeric_limits<float>::quiet_NaN()};
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (int64_t n : {1, 15, 1000, 70001}) {
    std::vector<float> v;
    for (double d : RandomUniform(n, rng, -70000.0, 70000.0)) v.push_back(d);
    for (size_t i = 0; i < edge.size() && i < v.size(); ++i) v[i] = edge[i];
    for (size_t i = edge.size(); i < v.size(); i += 3) v[i] *= 1e-5f;  // small magnitudes too
    for (DType from : types) {
      const std::vector<uint8_t> src = Store(v, from);
      const std::vector<float> src_values = Load(src, from);
      for (DType to : types) {
        SCOPED_TRACE(absl::StrCat("n=", n, " ", DTypeName(from), " -> ", DTypeName(to)));
        const std::vector<uint8_t> want = Store(src_values, to);
        std::vector<std::vector<uint8_t>> results;
        for (Backend* b : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
          std::vector<uint8_t> dst(want.size(), 0xAB);
          CastArgs a;
          a.n = n;
          a.src = src.data();
          a.src_dtype = from;
          a.dst = dst.data();
          a.dst_dtype = to;
          ASSERT_TRUE(b->Cast(a).ok());
          results.push_back(dst);
        }
        ASSERT_EQ(results[0], results[1]);
        const std::vector<float> got = Load(results[0], to);
        const std::vector<float> exp = Load(want, to);
        for (int64_t i = 0; i < n; ++i) {
          if (std::isnan(exp[i])) {
            EXPECT_TRUE(std::isnan(got[i])) << i;
          } else {
            ASSERT_EQ(std::memcmp(&results[0][i * DTypeSize(to)], &want[i * DTypeSize(to)],
                                  DTypeSize(to)),
                      0)
                << "element " << i << ": " << src_values[i] << " -> " << got[i] << ", want "
                << exp[i];
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace moe
