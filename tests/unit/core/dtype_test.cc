// DType sizes, names and parsing; the bf16 and f16 conversions bit by bit against references
// written here from the IEEE 754 rules (and, for f16, the CPU's own F16C conversion).
#include "kernels/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace moe {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

TEST(DTypeTest, SizesAndNames) {
  struct Case {
    DType type;
    int64_t size;
    const char* name;
  };
  const Case cases[] = {
      {DType::kF32, 4, "f32"}, {DType::kBF16, 2, "bf16"}, {DType::kF16, 2, "f16"},
      {DType::kI32, 4, "i32"}, {DType::kI64, 8, "i64"},   {DType::kU8, 1, "u8"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(DTypeSize(c.type), c.size) << c.name;
    EXPECT_EQ(DTypeName(c.type), c.name);
    DType parsed = DType::kU8;
    ASSERT_TRUE(ParseDType(c.name, &parsed)) << c.name;
    EXPECT_EQ(parsed, c.type) << c.name;
  }
  static_assert(DTypeSize(DType::kBF16) == sizeof(bf16), "bf16 storage is 2 bytes");
  static_assert(DTypeSize(DType::kF16) == sizeof(f16), "f16 storage is 2 bytes");
  static_assert(DTypeOf<bf16>::value == DType::kBF16, "DTypeOf<bf16>");
  static_assert(DTypeOf<int64_t>::value == DType::kI64, "DTypeOf<int64_t>");
}

TEST(DTypeTest, ParsesLongNames) {
  const std::pair<const char*, DType> cases[] = {
      {"float32", DType::kF32}, {"bfloat16", DType::kBF16}, {"float16", DType::kF16},
      {"int32", DType::kI32},   {"int64", DType::kI64},     {"uint8", DType::kU8},
  };
  for (const auto& [name, type] : cases) {
    DType parsed = DType::kU8;
    ASSERT_TRUE(ParseDType(name, &parsed)) << name;
    EXPECT_EQ(parsed, type) << name;
  }
}

TEST(DTypeTest, RejectsUnknownNamesAndLeavesOutputAlone) {
  for (const char* name : {"", "F32", "fp32", "bf16 ", " bf16", "f8", "float", "int8", "i16"}) {
    DType parsed = DType::kI64;
    EXPECT_FALSE(ParseDType(name, &parsed)) << "'" << name << "'";
    EXPECT_EQ(parsed, DType::kI64) << "'" << name << "'";
  }
}

// ---------------------------------------------------------------------------------------------
// bf16

// The bf16 nearest to a finite or infinite float, ties to the even pattern: computed from the
// two neighbouring bf16 values in float64, independently of the bit trick under test.
uint16_t ReferenceBf16(float f) {
  const uint32_t u = Bits(f);
  const uint16_t sign = static_cast<uint16_t>(u >> 16) & 0x8000u;
  const uint16_t lo = static_cast<uint16_t>((u & 0x7fffffffu) >> 16);  // magnitude, truncated
  if ((u & 0xffffu) == 0 || lo >= 0x7f80u) return sign | lo;           // exact, or inf
  const uint16_t hi = lo + 1;  // 0x7f80 (inf) when lo is the largest finite bf16
  const double a = std::fabs(static_cast<double>(f));
  const double lo_v = static_cast<double>(FromBits(static_cast<uint32_t>(lo) << 16));
  // The value of `hi` as if the exponent range went on: 2^128 for the pattern of inf.
  const double hi_v = hi == 0x7f80u
                          ? std::ldexp(1.0, 128)
                          : static_cast<double>(FromBits(static_cast<uint32_t>(hi) << 16));
  const double d_lo = a - lo_v;
  const double d_hi = hi_v - a;
  if (d_lo < d_hi) return sign | lo;
  if (d_hi < d_lo) return sign | hi;
  return sign | ((lo & 1u) ? hi : lo);
}

TEST(Bf16Test, RoundsTiesToEven) {
  struct Case {
    uint32_t in;
    uint16_t out;
    const char* what;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f80u, "1 exact"},
      {0x3f808000u, 0x3f80u, "1 + half ulp: tie to even (down)"},
      {0x3f818000u, 0x3f82u, "tie with odd lower neighbour: up"},
      {0x3f808001u, 0x3f81u, "just above the tie: up"},
      {0x3f807fffu, 0x3f80u, "just below the tie: down"},
      {0xbf808000u, 0xbf80u, "negative tie to even"},
      {0xbf818000u, 0xbf82u, "negative tie, odd neighbour: away from zero"},
      {0x3fffffffu, 0x4000u, "carry into the exponent"},
      {0x7f7fffffu, 0x7f80u, "largest float rounds to inf"},
      {0x7f7f7fffu, 0x7f7fu, "just below the largest bf16's tie stays finite"},
      {0x7f7f8000u, 0x7f80u, "tie above the largest bf16 (odd): inf"},
      {0xff7fffffu, 0xff80u, "most negative float rounds to -inf"},
      {0x7f800000u, 0x7f80u, "+inf"},
      {0xff800000u, 0xff80u, "-inf"},
      {0x00000000u, 0x0000u, "+0"},
      {0x80000000u, 0x8000u, "-0"},
      {0x00008000u, 0x0000u, "subnormal tie to even zero"},
      {0x00018000u, 0x0002u, "subnormal tie, odd neighbour: up"},
      {0x0000ffffu, 0x0001u, "subnormal above the tie"},
      {0x00010000u, 0x0001u, "smallest bf16 subnormal, exact"},
      {0x007fffffu, 0x0080u, "largest float subnormal rounds to the smallest normal"},
      {0x80008001u, 0x8001u, "negative subnormal above the tie"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FloatToBf16(FromBits(c.in)).bits, c.out) << c.what << ": 0x" << std::hex << c.in;
    EXPECT_EQ(ReferenceBf16(FromBits(c.in)), c.out) << "reference, " << c.what;
  }
}

TEST(Bf16Test, NanStaysQuietNanWithSign) {
  // Payloads only in the low 16 bits would truncate to inf; they must stay NaN.
  for (uint32_t in : {0x7f800001u, 0x7fc00000u, 0x7fffffffu, 0x7f80ffffu, 0xff800001u, 0xffc00000u,
                      0x7fa00000u}) {
    const uint16_t out = FloatToBf16(FromBits(in)).bits;
    EXPECT_TRUE(std::isnan(Bf16ToFloat(bf16{out}))) << std::hex << in << " -> " << out;
    EXPECT_EQ(out & 0x0040u, 0x0040u) << "quiet bit, " << std::hex << in;
    EXPECT_EQ(out & 0x8000u, (in >> 16) & 0x8000u) << "sign, " << std::hex << in;
  }
}

TEST(Bf16Test, ExhaustiveRoundTripOfEveryPattern) {
  int nans = 0;
  for (uint32_t p = 0; p <= 0xffffu; ++p) {
    const bf16 in{static_cast<uint16_t>(p)};
    const float f = Bf16ToFloat(in);
    ASSERT_EQ(Bits(f), p << 16) << "widening is a shift, pattern 0x" << std::hex << p;
    const uint16_t back = FloatToBf16(f).bits;
    if ((p & 0x7f80u) == 0x7f80u && (p & 0x7fu) != 0) {
      ++nans;
      ASSERT_TRUE(std::isnan(Bf16ToFloat(bf16{back}))) << std::hex << p;
      // A quiet NaN comes back unchanged; a signalling one comes back quieted.
      ASSERT_EQ(back, p | 0x40u) << std::hex << p;
    } else {
      ASSERT_EQ(back, p) << "pattern 0x" << std::hex << p;
      ASSERT_EQ(RoundToBf16(f), f);
    }
  }
  EXPECT_EQ(nans, 2 * 127);
}

TEST(Bf16Test, RandomFloatsMatchReference) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng());
    const float f = FromBits(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f).bits, ReferenceBf16(f)) << "0x" << std::hex << u;
  }
}

// Every bf16 midpoint (exactly between two neighbours) and one float ulp either side of it.
TEST(Bf16Test, EveryMidpointAndItsNeighbours) {
  for (uint32_t p = 0; p < 0x7f80u; ++p) {
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t mid = sign | (p << 16) | 0x8000u;
      for (uint32_t u : {mid - 1, mid, mid + 1}) {
        ASSERT_EQ(FloatToBf16(FromBits(u)).bits, ReferenceBf16(FromBits(u)))
            << "0x" << std::hex << u;
      }
      ASSERT_EQ(FloatToBf16(FromBits(mid)).bits, (sign >> 16) | (p + (p & 1u)))
          << "tie to even, 0x" << std::hex << mid;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// f16

// The value of an f16 pattern in float64 from the IEEE 754 binary16 definition.
double ReferenceF16Value(uint16_t h) {
  const int sign = (h & 0x8000u) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int man = h & 0x3ff;
  if (exp == 0x1f) {
    return man ? std::numeric_limits<double>::quiet_NaN()
               : sign * std::numeric_limits<double>::infinity();
  }
  if (exp == 0) return sign * std::ldexp(static_cast<double>(man), -24);
  return sign * std::ldexp(static_cast<double>(1024 + man), exp - 25);
}

// The f16 nearest to a non-NaN float, ties to the even pattern, overflow to inf as IEEE 754
// rounds it (as if the exponent range went on: anything from 65520 up is inf): a binary search
// over the table of all non-negative finite f16 values, in float64.
class ReferenceF16 {
 public:
  ReferenceF16() {
    for (uint32_t p = 0; p < 0x7c00u; ++p) values_.push_back(ReferenceF16Value(p));
    values_.push_back(65536.0);  // the pattern 0x7c00 (inf) in the role of 2^16
  }
  uint16_t operator()(float f) const {
    const uint16_t sign = (Bits(f) >> 16) & 0x8000u;
    const double a = std::fabs(static_cast<double>(f));
    if (a >= 65536.0) return sign | 0x7c00u;
    // First pattern whose value is >= a.
    size_t hi = 0;
    size_t count = values_.size();
    while (count > 0) {
      const size_t step = count / 2;
      if (values_[hi + step] < a) {
        hi += step + 1;
        count -= step + 1;
      } else {
        count = step;
      }
    }
    if (values_[hi] == a || hi == 0) return sign | static_cast<uint16_t>(hi);
    const size_t lo = hi - 1;
    const double d_lo = a - values_[lo];
    const double d_hi = values_[hi] - a;
    size_t pick = d_lo < d_hi ? lo : d_hi < d_lo ? hi : ((lo & 1u) ? hi : lo);
    return sign | static_cast<uint16_t>(pick);
  }

 private:
  std::vector<double> values_;
};

bool IsF16Nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

bool HaveF16c() {
#if defined(__F16C__)
  return __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

uint16_t HardwareFloatToF16(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  (void)f;
  return 0;
#endif
}

float HardwareF16ToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  (void)h;
  return 0;
#endif
}

TEST(F16Test, ExhaustiveWideningMatchesDefinition) {
  for (uint32_t p = 0; p <= 0xffffu; ++p) {
    const uint16_t h = static_cast<uint16_t>(p);
    const float f = F16ToFloat(f16{h});
    const double want = ReferenceF16Value(h);
    if (IsF16Nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << p;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << "pattern 0x" << std::hex << p;
    ASSERT_EQ(std::signbit(f), (p & 0x8000u) != 0) << "sign, pattern 0x" << std::hex << p;
    if (HaveF16c()) {
      ASSERT_EQ(Bits(f), Bits(HardwareF16ToFloat(h))) << "F16C, pattern 0x" << std::hex << p;
    }
  }
}

TEST(F16Test, ExhaustiveRoundTripOfEveryPattern) {
  int nans = 0;
  for (uint32_t p = 0; p <= 0xffffu; ++p) {
    const uint16_t h = static_cast<uint16_t>(p);
    const uint16_t back = FloatToF16(F16ToFloat(f16{h})).bits;
    if (IsF16Nan(h)) {
      ++nans;
      ASSERT_TRUE(IsF16Nan(back)) << "NaN 0x" << std::hex << p << " came back as 0x" << back;
      ASSERT_EQ(back & 0x8000u, p & 0x8000u) << "NaN sign, 0x" << std::hex << p;
    } else {
      ASSERT_EQ(back, h) << "pattern 0x" << std::hex << p;
    }
  }
  EXPECT_EQ(nans, 2 * 1023);
}

TEST(F16Test, EdgeCases) {
  struct Case {
    float in;
    uint16_t out;
    const char* what;
  };
  const Case cases[] = {
      {0.0f, 0x0000u, "+0"},
      {-0.0f, 0x8000u, "-0"},
      {1.0f, 0x3c00u, "1"},
      {65504.0f, 0x7bffu, "largest finite"},
      {65519.996f, 0x7bffu, "just below the overflow tie"},
      {65520.0f, 0x7c00u, "overflow tie (odd neighbour): inf"},
      {-65520.0f, 0xfc00u, "negative overflow tie: -inf"},
      {1e10f, 0x7c00u, "far overflow"},
      {std::numeric_limits<float>::infinity(), 0x7c00u, "+inf"},
      {-std::numeric_limits<float>::infinity(), 0xfc00u, "-inf"},
      {std::ldexp(1.0f, -24), 0x0001u, "smallest subnormal"},
      {std::ldexp(1.0f, -25), 0x0000u, "half the smallest subnormal: tie to zero"},
      {std::ldexp(1.5f, -25), 0x0001u, "above that tie"},
      {std::ldexp(3.0f, -25), 0x0002u, "subnormal tie, odd neighbour: up"},
      {std::ldexp(1.0f, -14), 0x0400u, "smallest normal"},
      {std::ldexp(1023.5f, -24), 0x0400u, "subnormal tie rounding up into the normals"},
      {1.0f + std::ldexp(1.0f, -11), 0x3c00u, "1 + half ulp: tie to even"},
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02u, "tie, odd neighbour: up"},
      {2047.5f / 1024.0f, 0x4000u, "carry into the exponent"},
      {std::ldexp(1.0f, -30), 0x0000u, "underflow to +0"},
      {-std::ldexp(1.0f, -30), 0x8000u, "underflow to -0"},
      {std::numeric_limits<float>::denorm_min(), 0x0000u, "float subnormal"},
  };
  const ReferenceF16 reference;
  for (const Case& c : cases) {
    EXPECT_EQ(FloatToF16(c.in).bits, c.out) << c.what << " (" << c.in << ")";
    EXPECT_EQ(reference(c.in), c.out) << "reference, " << c.what;
    if (HaveF16c()) {
      EXPECT_EQ(HardwareFloatToF16(c.in), c.out) << "F16C, " << c.what;
    }
  }
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7f802000u}) {
    const uint16_t out = FloatToF16(FromBits(nan)).bits;
    EXPECT_TRUE(IsF16Nan(out)) << std::hex << nan << " -> " << out;
    EXPECT_EQ(out & 0x8000u, (nan >> 16) & 0x8000u) << std::hex << nan;
  }
}

// Every f16 midpoint, exactly representable in float, and one float ulp either side of it.
TEST(F16Test, EveryMidpointAndItsNeighbours) {
  const ReferenceF16 reference;
  for (uint32_t p = 0; p < 0x7c00u; ++p) {
    const double mid =
        (ReferenceF16Value(p) + (p == 0x7bffu ? 65536.0 : ReferenceF16Value(p + 1))) / 2;
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid) << "midpoints are floats, 0x" << std::hex << p;
    for (float s : {1.0f, -1.0f}) {
      for (float f : {std::nextafter(m, 0.0f), m, std::nextafter(m, 1e30f)}) {
        const float x = s * f;
        ASSERT_EQ(FloatToF16(x).bits, reference(x)) << "0x" << std::hex << Bits(x);
        if (HaveF16c()) {
          ASSERT_EQ(FloatToF16(x).bits, HardwareFloatToF16(x)) << "F16C, 0x" << std::hex << Bits(x);
        }
      }
    }
  }
}

TEST(F16Test, RandomFloatsMatchReferenceAndF16c) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const ReferenceF16 reference;
  // Half the draws over all bit patterns, half over exponents where f16 is not just 0 or inf.
  std::uniform_int_distribution<uint32_t> exponent(127 - 26, 127 + 16);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = static_cast<uint32_t>(rng());
    if (i % 2 == 1) u = (u & 0x807fffffu) | (exponent(rng) << 23);
    const float f = FromBits(u);
    if (std::isnan(f)) continue;
    const uint16_t got = FloatToF16(f).bits;
    ASSERT_EQ(got, reference(f)) << "0x" << std::hex << u;
    if (HaveF16c()) {
      ASSERT_EQ(got, HardwareFloatToF16(f)) << "F16C, 0x" << std::hex << u;
    }
  }
}

// Says (as a skip, never a silent pass) when the F16C comparisons above could not run.
TEST(F16Test, F16cComparisonsRan) {
  if (!HaveF16c())
    GTEST_SKIP() << "F16C not compiled in or not on this CPU: float64 reference only";
}

}  // namespace
}  // namespace moe
