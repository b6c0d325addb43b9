// RMSNorm per row: an 8-lane fp32 sum of squares in a fixed order (the contract's), then HF's
// rounding order (bf16: the normalized row rounds to bf16 before the weight multiplies it).
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::StoreBf16;

MOE_CPU_INLINE float Load(float v) { return v; }
MOE_CPU_INLINE float Load(uint16_t v) { return LoadBf16(v); }

// 1 / sqrt(mean(x^2) + eps). Element j goes to lane j mod 8: the inner loop is one vector add
// per 8 elements, and the order never depends on the thread count or the vector width.
template <typename T>
float InvRms(const T* x, int64_t n, float eps) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
#pragma omp simd
    for (int l = 0; l < 8; ++l) {
      const float v = Load(x[j + l]);
      lane[l] += v * v;
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    const float v = Load(x[j]);
    lane[l] += v * v;
  }
  const float sum =
      ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  return 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
}

void RowF32(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float inv = InvRms(x, n, eps);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = w[j] * (x[j] * inv);
}

void RowBf16(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  const float inv = InvRms(x, n, eps);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float normed = LoadBf16(StoreBf16(LoadBf16(x[j]) * inv));
    out[j] = StoreBf16(LoadBf16(w[j]) * normed);
  }
}

}  // namespace

absl::Status CpuBackend::RunRmsNorm(const RmsNormArgs& args) {
  const int64_t cols = args.cols;
  // Two passes over the row (sum, then scale): ~3 element operations each.
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.rows * cols * 3);
  const int64_t chunk = cpu_kernels::ChunkFor(cols * 3);
  if (args.dtype == DType::kF32) {
    const auto* x = static_cast<const float*>(args.x);
    const auto* w = static_cast<const float*>(args.weight);
    auto* out = static_cast<float*>(args.out);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
    for (int64_t r = 0; r < args.rows; ++r) {
      RowF32(x + RmsNormRowOffset(args, r, args.x_ld), w, cols, args.eps,
             out + RmsNormRowOffset(args, r, args.out_ld));
    }
  } else {
    const auto* x = static_cast<const uint16_t*>(args.x);
    const auto* w = static_cast<const uint16_t*>(args.weight);
    auto* out = static_cast<uint16_t*>(args.out);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
    for (int64_t r = 0; r < args.rows; ++r) {
      RowBf16(x + RmsNormRowOffset(args, r, args.x_ld), w, cols, args.eps,
              out + RmsNormRowOffset(args, r, args.out_ld));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
