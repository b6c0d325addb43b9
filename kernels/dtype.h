// Element types and the bf16 / f16 bit conversions shared by the engine and every backend.
// It lives in kernels/ (not engine/core) because kernels never include engine/;
// engine/core/dtype.h re-exports it.
#ifndef MOE_KERNELS_DTYPE_H_
#define MOE_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>

#include "absl/strings/string_view.h"

namespace moe {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kI64, kU8 };

// Bytes per element.
constexpr int64_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
  }
  return 0;
}

// Lower-case name used in messages and configs: "f32", "bf16", "f16", "i32", "i64", "u8".
absl::string_view DTypeName(DType t);

// Parses a name as written by DTypeName (also "float32", "bfloat16", "float16").
bool ParseDType(absl::string_view name, DType* out);

// Storage types. Arithmetic is always done in float after an explicit conversion.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float Bf16ToFloat(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, as PyTorch does; NaN stays a (quiet) NaN.
inline bf16 FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// The float nearest to f that bf16 can hold.
inline float RoundToBf16(float f) { return Bf16ToFloat(FloatToBf16(f)); }

float F16ToFloat(f16 v);
f16 FloatToF16(float f);

// Compile-time map from a storage type to its DType.
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<bf16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<f16> {
  static constexpr DType value = DType::kF16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kI64;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::kU8;
};

}  // namespace moe

#endif  // MOE_KERNELS_DTYPE_H_
