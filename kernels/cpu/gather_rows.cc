// GatherRows: dst[r] = src[index[r] / divisor], optionally scaled in fp32 with one rounding.
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::StoreBf16;

void ScaleRowF32(const float* src, float s, int64_t cols, float* dst) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] * s;
}

void ScaleRowBf16(const uint16_t* src, float s, int64_t cols, uint16_t* dst) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) dst[j] = StoreBf16(LoadBf16(src[j]) * s);
}

void ScaleRowF16(const f16* src, float s, int64_t cols, f16* dst) {
  for (int64_t j = 0; j < cols; ++j) dst[j] = FloatToF16(F16ToFloat(src[j]) * s);
}

}  // namespace

absl::Status CpuBackend::RunGatherRows(const GatherRowsArgs& args) {
  // Every index is checked before anything is written.
  for (int64_t r = 0; r < args.rows; ++r) {
    const int64_t idx = args.index[r];
    if (idx < 0 || idx / args.index_divisor >= args.src_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("gather_rows: index[", r, "]=", idx, " / index_divisor=", args.index_divisor,
                       " is outside the source rows [0, src_rows=", args.src_rows, ")"));
    }
  }
  const int64_t elem = DTypeSize(args.dtype);
  const auto* src = static_cast<const uint8_t*>(args.src);
  auto* dst = static_cast<uint8_t*>(args.dst);
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.rows * args.cols);
  const int64_t chunk = cpu_kernels::ChunkFor(args.cols);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
  for (int64_t r = 0; r < args.rows; ++r) {
    const int32_t idx = args.index[r];
    const uint8_t* s = src + (idx / args.index_divisor) * args.src_ld * elem;
    uint8_t* d = dst + r * args.dst_ld * elem;
    if (args.slot_scale == nullptr) {
      std::memcpy(d, s, args.cols * elem);
      continue;
    }
    const float scale = args.slot_scale[idx];
    switch (args.dtype) {
      case DType::kF32:
        ScaleRowF32(reinterpret_cast<const float*>(s), scale, args.cols,
                    reinterpret_cast<float*>(d));
        break;
      case DType::kBF16:
        ScaleRowBf16(reinterpret_cast<const uint16_t*>(s), scale, args.cols,
                     reinterpret_cast<uint16_t*>(d));
        break;
      default:  // f16; validation admits f32, bf16 and f16 only.
        ScaleRowF16(reinterpret_cast<const f16*>(s), scale, args.cols, reinterpret_cast<f16*>(d));
        break;
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
