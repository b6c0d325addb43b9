// RoPE in place, fp32 math per element and one rounding for bf16. Positions are checked before
// anything is written, so a bad position leaves x untouched.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::StoreBf16;

MOE_CPU_INLINE float Load(const float* p) { return *p; }
MOE_CPU_INLINE float Load(const uint16_t* p) { return LoadBf16(*p); }
MOE_CPU_INLINE void Store(float v, float* p) { *p = v; }
MOE_CPU_INLINE void Store(float v, uint16_t* p) { *p = StoreBf16(v); }

// One head: pair i is (a_i, b_i) = (x[i], x[i + half]) (kHalf) or (x[2i], x[2i + 1]).
// a * c - b * s and b * c + a * s, each product rounded on its own (no fma: HF's order).
template <typename T>
void RotateHead(T* x, const float* cos, const float* sin, int64_t half, bool interleaved) {
  const int64_t step = interleaved ? 2 : 1;
  const int64_t other = interleaved ? 1 : half;
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    T* pa = x + i * step;
    T* pb = pa + other;
    const float a = Load(pa);
    const float b = Load(pb);
    Store(a * cos[i] - b * sin[i], pa);
    Store(b * cos[i] + a * sin[i], pb);
  }
}

template <typename T>
void RopeRows(const RopeArgs& args, int threads, int64_t chunk) {
  T* x = static_cast<T*>(args.x);
  const int64_t half = args.rotary_dim / 2;
  const bool interleaved = args.style == RopeStyle::kInterleaved;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
  for (int64_t r = 0; r < args.rows; ++r) {
    const int64_t p = args.positions[r];
    const float* c = args.cos + p * half;
    const float* s = args.sin + p * half;
    T* row = x + r * args.ld;
    for (int64_t h = 0; h < args.heads; ++h) {
      RotateHead(row + h * args.head_dim, c, s, half, interleaved);
    }
  }
}

}  // namespace

absl::Status CpuBackend::RunRope(const RopeArgs& args) {
  for (int64_t r = 0; r < args.rows; ++r) {
    const int64_t p = args.positions[r];
    if (p < 0 || p >= args.max_positions) {
      return absl::InvalidArgumentError(
          absl::StrCat("rope: positions[", r, "]=", p,
                       " is outside [0, max_positions=", args.max_positions, ")"));
    }
  }
  // ~6 flops per rotated element.
  const int64_t per_row = args.heads * args.rotary_dim * 3;
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.rows * per_row);
  const int64_t chunk = cpu_kernels::ChunkFor(per_row);
  if (args.dtype == DType::kF32) {
    RopeRows<float>(args, threads, chunk);
  } else {
    RopeRows<uint16_t>(args, threads, chunk);
  }
  return absl::OkStatus();
}

}  // namespace moe
