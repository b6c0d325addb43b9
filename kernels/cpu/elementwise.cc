// ScaleRows, Add and Cast: elementwise in fp32, one rounding to the output dtype.
// Each element depends on its own inputs only, so in-place use (allowed by backend.h for
// ScaleRows and Add) is safe, as is any split over threads.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::SigmoidF;
using cpu_kernels::StoreBf16;

// Elements per parallel chunk of the flat ops: large enough to amortise the scheduling.
constexpr int64_t kFlatChunk = int64_t{1} << 14;

// Runs fn(begin, end) over [0, n) in chunks, on `threads` threads.
template <typename Fn>
void ForChunks(int64_t n, int threads, Fn fn) {
  const int64_t chunks = (n + kFlatChunk - 1) / kFlatChunk;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kFlatChunk;
    fn(begin, n - begin < kFlatChunk ? n : begin + kFlatChunk);
  }
}

// Loads / stores one element of a float dtype as fp32; for the scalar f16 paths.
float LoadAny(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kBF16:
      return LoadBf16(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16:
      return F16ToFloat(static_cast<const f16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

void StoreAny(float v, DType t, int64_t i, void* p) {
  switch (t) {
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = StoreBf16(v);
      break;
    case DType::kF16:
      static_cast<f16*>(p)[i] = FloatToF16(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
      break;
  }
}

}  // namespace

absl::Status CpuBackend::RunScaleRows(const ScaleRowsArgs& args) {
  const int64_t cols = args.cols;
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.rows * cols);
  const int64_t chunk = cpu_kernels::ChunkFor(cols);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
  for (int64_t r = 0; r < args.rows; ++r) {
    const float s = args.sigmoid_of_scale ? SigmoidF(args.scale[r]) : args.scale[r];
    if (args.dtype == DType::kF32) {
      const float* src = static_cast<const float*>(args.src) + r * args.src_ld;
      float* dst = static_cast<float*>(args.dst) + r * args.dst_ld;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] * s;
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(args.src) + r * args.src_ld;
      uint16_t* dst = static_cast<uint16_t*>(args.dst) + r * args.dst_ld;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) dst[j] = StoreBf16(LoadBf16(src[j]) * s);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RunAdd(const AddArgs& args) {
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.n);
  if (args.dtype == DType::kF32) {
    const auto* a = static_cast<const float*>(args.a);
    const auto* b = static_cast<const float*>(args.b);
    auto* out = static_cast<float*>(args.out);
    ForChunks(args.n, threads, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] = a[i] + b[i];
    });
  } else {
    const auto* a = static_cast<const uint16_t*>(args.a);
    const auto* b = static_cast<const uint16_t*>(args.b);
    auto* out = static_cast<uint16_t*>(args.out);
    ForChunks(args.n, threads, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] = StoreBf16(LoadBf16(a[i]) + LoadBf16(b[i]));
    });
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RunCast(const CastArgs& args) {
  const DType from = args.src_dtype;
  const DType to = args.dst_dtype;
  if (from == to) {
    if (args.src != args.dst) std::memmove(args.dst, args.src, args.n * DTypeSize(from));
    return absl::OkStatus();
  }
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.n);
  if (from == DType::kF32 && to == DType::kBF16) {
    const auto* src = static_cast<const float*>(args.src);
    auto* dst = static_cast<uint16_t*>(args.dst);
    ForChunks(args.n, threads, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) dst[i] = StoreBf16(src[i]);
    });
  } else if (from == DType::kBF16 && to == DType::kF32) {
    const auto* src = static_cast<const uint16_t*>(args.src);
    auto* dst = static_cast<float*>(args.dst);
    ForChunks(args.n, threads, [=](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) dst[i] = LoadBf16(src[i]);
    });
  } else {
    // Any pair with f16: through fp32 (exact for the widening step), one rounding.
    const void* src = args.src;
    void* dst = args.dst;
    ForChunks(args.n, threads, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) StoreAny(LoadAny(src, from, i), to, i, dst);
    });
  }
  return absl::OkStatus();
}

}  // namespace moe
