#include "kernels/dtype.h"

#include <cmath>

namespace moe {

absl::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kU8:
      return "u8";
  }
  return "?";
}

bool ParseDType(absl::string_view name, DType* out) {
  struct Entry {
    absl::string_view name;
    DType type;
  };
  static constexpr Entry kNames[] = {
      {"f32", DType::kF32},       {"float32", DType::kF32}, {"bf16", DType::kBF16},
      {"bfloat16", DType::kBF16}, {"f16", DType::kF16},     {"float16", DType::kF16},
      {"i32", DType::kI32},       {"int32", DType::kI32},   {"i64", DType::kI64},
      {"int64", DType::kI64},     {"u8", DType::kU8},       {"uint8", DType::kU8},
  };
  for (const Entry& e : kNames) {
    if (e.name == name) {
      *out = e.type;
      return true;
    }
  }
  return false;
}

float F16ToFloat(f16 v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  const uint32_t man = v.bits & 0x3ffu;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(man), -24);  // zero or subnormal
  } else if (exp == 31) {
    magnitude = man ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t u;
  std::memcpy(&u, &magnitude, sizeof(u));
  u |= sign;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

f16 FloatToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return f16{static_cast<uint16_t>(sign | 0x7e00u)};
  if (a >= 65520.0f) return f16{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (a < 6.103515625e-05f) {
    // Subnormal range: multiples of 2^-24, round to nearest even.
    const float scaled = a * 16777216.0f;
    return f16{static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // 11 significant bits: scale the mantissa to [1024, 2048) and round to nearest even.
  float scaled = std::nearbyint(m * 2048.0f);
  if (scaled == 2048.0f) {
    scaled = 1024.0f;
    ++e;
  }
  const uint32_t biased = static_cast<uint32_t>(e - 1 + 15);
  return f16{
      static_cast<uint16_t>(sign | (biased << 10) | (static_cast<uint32_t>(scaled) & 0x3ffu))};
}

}  // namespace moe
