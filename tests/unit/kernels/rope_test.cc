// RoPE: the cos / sin tables against a float64 implementation of Hugging Face's default and
// YaRN formulas (DeepSeek-V3 tiny config values), the rotation against float64 (f32 also bit
// for bit against HF's fp32 formula), norms, the DeepSeek de-interleave equivalence, and
// validation at the exact limits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/rope_table.h"
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

// HF modeling_rope_utils in float64: _compute_default_rope_parameters and
// _compute_yarn_parameters; returns inv_freq and sets *attention_factor.
std::vector<double> HfInvFreq64(const RopeTableOptions& o, double* attention_factor) {
  const int64_t dim = o.rotary_dim;
  std::vector<double> inv(dim / 2);
  *attention_factor = 1.0;
  for (int64_t i = 0; i < dim / 2; ++i) inv[i] = 1.0 / std::pow(o.theta, 2.0 * i / dim);
  if (o.type == RopeScalingType::kDefault) return inv;
  auto get_mscale = [](double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; };
  *attention_factor = o.attention_factor != 0 ? o.attention_factor
                      : (o.mscale != 0 && o.mscale_all_dim != 0)
                          ? get_mscale(o.factor, o.mscale) / get_mscale(o.factor, o.mscale_all_dim)
                          : get_mscale(o.factor, 1.0);
  auto corr_dim = [&](double rot) {
    return dim * std::log(o.original_max_position_embeddings / (rot * 2 * M_PI)) /
           (2 * std::log(o.theta));
  };
  double low = std::floor(corr_dim(o.beta_fast)), high = std::ceil(corr_dim(o.beta_slow));
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrap_factor = 1 - ramp;
    const double extrap = inv[i], interp = inv[i] / o.factor;
    inv[i] = interp * (1 - extrap_factor) + extrap * extrap_factor;
  }
  return inv;
}

// models/deepseek-v3-tiny/config.json: qk_rope_head_dim 8, rope_theta 1e4, yarn factor 4,
// original_max_position_embeddings 64, beta_fast 32, beta_slow 1, mscale 1, mscale_all_dim 1,
// max_position_embeddings 256.
RopeTableOptions TinyDeepSeekYarn() {
  RopeTableOptions o;
  o.rotary_dim = 8;
  o.max_positions = 256;
  o.theta = 10000.0;
  o.type = RopeScalingType::kYarn;
  o.factor = 4.0;
  o.original_max_position_embeddings = 64;
  o.beta_fast = 32.0;
  o.beta_slow = 1.0;
  o.mscale = 1.0;
  o.mscale_all_dim = 1.0;
  return o;
}

void ExpectTableMatchesHf64(const RopeTableOptions& o) {
  double af = 0;
  const std::vector<double> inv = HfInvFreq64(o, &af);
  absl::StatusOr<RopeTable> t = MakeRopeTable(o);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->half, o.rotary_dim / 2);
  EXPECT_NEAR(t->attention_factor, af, 1e-7 * af);
  for (int64_t i = 0; i < t->half; ++i) {
    EXPECT_NEAR(t->inv_freq[i], inv[i], 1e-6 * inv[i]) << "i=" << i;
  }
  for (int64_t p = 0; p < o.max_positions; ++p) {
    for (int64_t i = 0; i < t->half; ++i) {
      const double angle = p * inv[i];
      // fp32 inv_freq and angle (as HF computes them): a few ulp of the angle.
      const double tol = af * (1e-6 * angle + 2e-7);
      ASSERT_NEAR(t->cos[p * t->half + i], af * std::cos(angle), tol) << p << "," << i;
      ASSERT_NEAR(t->sin[p * t->half + i], af * std::sin(angle), tol) << p << "," << i;
    }
  }
}

TEST(RopeTableTest, DefaultMatchesHf) {
  RopeTableOptions o;
  o.rotary_dim = 8;
  o.max_positions = 256;
  ExpectTableMatchesHf64(o);
  o.rotary_dim = 128;  // Llama / Mixtral / Qwen head_dim, larger theta
  o.theta = 1e6;
  o.max_positions = 4096;
  ExpectTableMatchesHf64(o);
}

TEST(RopeTableTest, YarnMatchesHfWithTinyDeepSeekConfig) {
  const RopeTableOptions o = TinyDeepSeekYarn();
  ExpectTableMatchesHf64(o);
  // dim 8: correction range [0, 2], so pair 0 extrapolates, 1 blends half-half, 2 and 3
  // interpolate; mscale == mscale_all_dim gives attention factor 1.
  absl::StatusOr<RopeTable> t = MakeRopeTable(o);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->inv_freq[0], 1.0f);
  EXPECT_NEAR(t->inv_freq[1], 0.5 * (0.1 + 0.025), 1e-8);
  EXPECT_NEAR(t->inv_freq[2], 0.01 / 4, 1e-9);
  EXPECT_NEAR(t->inv_freq[3], 0.001 / 4, 1e-10);
  EXPECT_EQ(t->attention_factor, 1.0f);
}

TEST(RopeTableTest, YarnAttentionFactorVariants) {
  RopeTableOptions o = TinyDeepSeekYarn();
  o.mscale = 0.707;
  ExpectTableMatchesHf64(o);  // factor != 1
  o.mscale = 0;               // absent: get_mscale(factor) = 1 + 0.1 ln 4
  ExpectTableMatchesHf64(o);
  EXPECT_NEAR(MakeRopeTable(o)->attention_factor, 1 + 0.1 * std::log(4.0), 1e-7);
  o.attention_factor = 0.5;
  ExpectTableMatchesHf64(o);
  o = TinyDeepSeekYarn();
  o.rotary_dim = 64;  // DeepSeek-V3's qk_rope_head_dim, its real YaRN values
  o.factor = 40;
  o.original_max_position_embeddings = 4096;
  o.mscale_all_dim = 1.0;
  o.max_positions = 1024;
  ExpectTableMatchesHf64(o);
}

TEST(RopeTableTest, RejectsBadOptions) {
  RopeTableOptions o = TinyDeepSeekYarn();
  o.rotary_dim = 7;
  EXPECT_EQ(MakeRopeTable(o).status().message(), "rope_table: rotary_dim=7 must be even and >= 2");
  o = TinyDeepSeekYarn();
  o.max_positions = 0;
  EXPECT_EQ(MakeRopeTable(o).status().message(), "rope_table: max_positions=0 must be positive");
  o = TinyDeepSeekYarn();
  o.factor = 0.5;
  EXPECT_EQ(MakeRopeTable(o).status().message(), "rope_table: factor=0.5 must be finite and >= 1");
  o = TinyDeepSeekYarn();
  o.original_max_position_embeddings = 0;
  EXPECT_EQ(MakeRopeTable(o).status().code(), absl::StatusCode::kInvalidArgument);
}

RopeArgs MakeArgs(DType dtype, RopeStyle style, int64_t rows, int64_t heads, int64_t head_dim,
                  int64_t rotary_dim, void* x, int64_t ld, const int32_t* pos, const RopeTable& t) {
  RopeArgs a;
  a.rows = rows;
  a.heads = heads;
  a.head_dim = head_dim;
  a.rotary_dim = rotary_dim;
  a.style = style;
  a.dtype = dtype;
  a.x = x;
  a.ld = ld;
  a.positions = pos;
  a.cos = t.cos.data();
  a.sin = t.sin.data();
  a.max_positions = t.max_positions;
  return a;
}

class RopeTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(RopeTest, MatchesFloat64Reference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  int64_t bf16_elems = 0, bf16_misses = 0;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
      for (auto [rows, heads, head_dim, rotary_dim, pad] :
           std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>>{
               {1, 1, 2, 2, 0},
               {7, 3, 10, 6, 3},
               {64, 4, 24, 8, 0},
               {33, 8, 128, 128, 1},
               {300, 16, 64, 64, 0},
               {5, 2, 96, 32, 5}}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " style=", static_cast<int>(style),
                                  " rows=", rows, " heads=", heads, " head_dim=", head_dim,
                                  " rotary_dim=", rotary_dim));
        RopeTableOptions o = TinyDeepSeekYarn();
        o.rotary_dim = rotary_dim;
        o.mscale = 0.8;  // attention factor != 1 to see it applied
        o.max_positions = 500;
        const RopeTable t = *MakeRopeTable(o);
        const int64_t ld = heads * head_dim + pad;
        const std::vector<double> x = RoundTo(RandomUniform(rows * ld, rng, -3, 3), dtype);
        std::vector<int32_t> pos(rows);
        std::uniform_int_distribution<int32_t> pick(0, 499);
        for (int32_t& p : pos) p = pick(rng);
        pos[0] = 499;
        std::vector<uint8_t> a1 = Encode(x, dtype), a2 = a1;
        ASSERT_TRUE(one_.Rope(MakeArgs(dtype, style, rows, heads, head_dim, rotary_dim, a1.data(),
                                       ld, pos.data(), t))
                        .ok());
        ASSERT_TRUE(two_.Rope(MakeArgs(dtype, style, rows, heads, head_dim, rotary_dim, a2.data(),
                                       ld, pos.data(), t))
                        .ok());
        ASSERT_EQ(a1, a2);
        const std::vector<double> got_all = Decode(a1.data(), rows * ld, dtype);
        std::vector<double> want = x;  // untouched outside the rotated dims
        std::vector<double> want_f32 = x;
        const int64_t half = rotary_dim / 2;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t h = 0; h < heads; ++h) {
            for (int64_t i = 0; i < half; ++i) {
              const int64_t base = r * ld + h * head_dim;
              const int64_t ia = base + (style == RopeStyle::kHalf ? i : 2 * i);
              const int64_t ib = ia + (style == RopeStyle::kHalf ? half : 1);
              const float c = t.cos[pos[r] * half + i], s = t.sin[pos[r] * half + i];
              const double xa = x[ia], xb = x[ib];
              want[ia] = xa * c - xb * s;
              want[ib] = xb * c + xa * s;
              const float fa = static_cast<float>(xa), fb = static_cast<float>(xb);
              want_f32[ia] = static_cast<float>(fa * c) - static_cast<float>(fb * s);
              want_f32[ib] = static_cast<float>(fb * c) + static_cast<float>(fa * s);
            }
          }
        }
        if (dtype == DType::kF32) {
          ASSERT_EQ(got_all, want_f32) << "HF's fp32 formula, bit for bit";
        } else {
          for (int64_t i = 0; i < rows * ld; ++i) {
            const double one_rounding = RoundToBf16(static_cast<float>(want[i]));
            ++bf16_elems;
            if (got_all[i] != one_rounding) ++bf16_misses;
          }
        }
        EXPECT_LE(MaxRelError(got_all, want), OpTol(dtype));
      }
    }
  }
  EXPECT_LE(bf16_misses, bf16_elems / 1000 + 2);
}

// Each rotated pair keeps its norm times the attention factor (1 for the default table).
TEST_F(RopeTest, RotationPreservesNorm) {
  std::mt19937_64 rng(TestSeed());
  for (double mscale : {1.0, 0.8}) {
    RopeTableOptions o = TinyDeepSeekYarn();
    o.rotary_dim = 64;
    o.mscale = mscale;
    const RopeTable t = *MakeRopeTable(o);
    const int64_t rows = 200, half = 32;
    const std::vector<double> x = RoundTo(RandomUniform(rows * 64, rng), DType::kF32);
    std::vector<uint8_t> raw = Encode(x, DType::kF32);
    std::vector<int32_t> pos(rows);
    for (int64_t r = 0; r < rows; ++r) pos[r] = static_cast<int32_t>(r);
    ASSERT_TRUE(two_.Rope(MakeArgs(DType::kF32, RopeStyle::kHalf, rows, 1, 64, 64, raw.data(), 64,
                                   pos.data(), t))
                    .ok());
    const std::vector<double> y = Decode(raw.data(), rows * 64, DType::kF32);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = r * 64 + i, b = a + half;
        const double before = std::hypot(x[a], x[b]);
        const double after = std::hypot(y[a], y[b]);
        ASSERT_NEAR(after, t.attention_factor * before, 1e-6 * (before + 1e-3))
            << "row " << r << " pair " << i;
      }
    }
  }
}

// HF DeepSeek-V3 (rope_interleave): de-interleave then rotate_half. kInterleaved on the
// original layout gives exactly those values, in the original dim order.
TEST_F(RopeTest, InterleavedEqualsHfDeinterleaveThenRotateHalf) {
  std::mt19937_64 rng(TestSeed());
  const RopeTable t = *MakeRopeTable(TinyDeepSeekYarn());
  const int64_t rows = 40, heads = 4, d = 8, half = 4;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::vector<double> x = RoundTo(RandomUniform(rows * heads * d, rng), dtype);
    std::vector<double> deinterleaved(x.size());
    for (int64_t k = 0; k < rows * heads; ++k) {
      for (int64_t i = 0; i < half; ++i) {
        deinterleaved[k * d + i] = x[k * d + 2 * i];
        deinterleaved[k * d + half + i] = x[k * d + 2 * i + 1];
      }
    }
    std::vector<uint8_t> a = Encode(x, dtype), b = Encode(deinterleaved, dtype);
    std::vector<int32_t> pos(rows);
    for (int64_t r = 0; r < rows; ++r) pos[r] = static_cast<int32_t>((r * 37) % 256);
    ASSERT_TRUE(one_.Rope(MakeArgs(dtype, RopeStyle::kInterleaved, rows, heads, d, d, a.data(),
                                   heads * d, pos.data(), t))
                    .ok());
    ASSERT_TRUE(one_.Rope(MakeArgs(dtype, RopeStyle::kHalf, rows, heads, d, d, b.data(), heads * d,
                                   pos.data(), t))
                    .ok());
    const std::vector<double> ya = Decode(a.data(), x.size(), dtype);
    const std::vector<double> yb = Decode(b.data(), x.size(), dtype);
    for (int64_t k = 0; k < rows * heads; ++k) {
      for (int64_t i = 0; i < half; ++i) {
        ASSERT_EQ(ya[k * d + 2 * i], yb[k * d + i]);
        ASSERT_EQ(ya[k * d + 2 * i + 1], yb[k * d + half + i]);
      }
    }
  }
}

TEST_F(RopeTest, ValidationAtTheLimits) {
  RopeTableOptions o;
  o.rotary_dim = 4;
  o.max_positions = 8;
  const RopeTable t = *MakeRopeTable(o);
  std::vector<float> x(2 * 24, 1.0f);
  std::vector<int32_t> pos = {0, 7};
  // 2 heads of head_dim 8 (rotary 4): the last rotated dim is 8 + 4 - 1, so ld >= 12.
  auto args = [&] {
    return MakeArgs(DType::kF32, RopeStyle::kHalf, 2, 2, 8, 4, x.data(), 12, pos.data(), t);
  };
  EXPECT_TRUE(one_.Rope(args()).ok());
  RopeArgs a = args();
  a.ld = 11;
  EXPECT_EQ(one_.Rope(a).message(), "rope: ld=11 is less than the row length 12");
  a = args();
  a.rows = -1;
  EXPECT_EQ(one_.Rope(a).message(), "rope: rows=-1 is negative");
  a = args();
  a.heads = -1;
  EXPECT_EQ(one_.Rope(a).message(), "rope: heads=-1 is negative");
  a = args();
  a.rotary_dim = 3;
  EXPECT_EQ(one_.Rope(a).message(), "rope: rotary_dim=3 must be even and >= 2");
  a.rotary_dim = 0;
  EXPECT_EQ(one_.Rope(a).message(), "rope: rotary_dim=0 must be even and >= 2");
  a = args();
  a.head_dim = 3;
  EXPECT_EQ(one_.Rope(a).message(), "rope: rotary_dim=4 exceeds head_dim=3");
  a.head_dim = 4;  // rotary_dim == head_dim
  a.ld = 8;
  EXPECT_TRUE(one_.Rope(a).ok());
  a = args();
  a.max_positions = 0;
  EXPECT_EQ(one_.Rope(a).message(), "rope: max_positions=0 must be positive");
  a = args();
  a.dtype = DType::kF16;
  EXPECT_EQ(one_.Rope(a).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(one_.Rope(a).message(), "rope: dtype=f16 (supported: f32, bf16)");
  a = args();
  a.style = static_cast<RopeStyle>(7);
  EXPECT_EQ(one_.Rope(a).message(), "rope: style=7 is not a RopeStyle");
  for (const char* field : {"x", "positions", "cos", "sin"}) {
    a = args();
    if (absl::string_view(field) == "x") a.x = nullptr;
    if (absl::string_view(field) == "positions") a.positions = nullptr;
    if (absl::string_view(field) == "cos") a.cos = nullptr;
    if (absl::string_view(field) == "sin") a.sin = nullptr;
    EXPECT_EQ(one_.Rope(a).message(), absl::StrCat("rope: ", field, " is null"));
  }
  // Positions: max_positions - 1 is fine, max_positions and -1 are not, and nothing is written.
  for (auto [p, msg] : std::vector<std::pair<int32_t, std::string>>{
           {8, "rope: positions[1]=8 is outside [0, max_positions=8)"},
           {-1, "rope: positions[1]=-1 is outside [0, max_positions=8)"}}) {
    std::fill(x.begin(), x.end(), 1.0f);
    pos = {3, p};
    const absl::Status s = two_.Rope(args());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), msg);
    for (float v : x) ASSERT_EQ(v, 1.0f) << "written before the check";
  }
}

}  // namespace
}  // namespace moe
