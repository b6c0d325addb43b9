#include "engine/layers/host_weights.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// Elements per OpenMP work item, and the host buffer a converted part goes through.
constexpr int64_t kChunkElems = int64_t{1} << 16;
constexpr size_t kBounceBytes = size_t{16} << 20;

bool IsHostWeightDType(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

inline float Widen(float v) { return v; }
inline float Widen(bf16 v) { return Bf16ToFloat(v); }
inline float Widen(f16 v) { return F16ToFloat(v); }

inline void Narrow(float v, float* out) { *out = v; }
inline void Narrow(float v, bf16* out) { *out = FloatToBf16(v); }

template <typename Src, typename Dst>
void ConvertRange(const Src* src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) Narrow(Widen(src[i]), dst + i);
}

template <typename Src, typename Dst>
void ConvertTyped(const void* src, int64_t n, void* dst) {
  const auto* s = static_cast<const Src*>(src);
  auto* d = static_cast<Dst*>(dst);
  const int64_t chunks = (n + kChunkElems - 1) / kChunkElems;
  // Every element is converted on its own, so the split cannot change a bit.
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunkElems;
    const int64_t count = std::min(kChunkElems, n - begin);
    ConvertRange(s + begin, d + begin, count);
  }
}

// n elements of `src_dtype` (f32, bf16 or f16) at src -> `dtype` (f32 or bf16) at dst
// (CopyHostAs copies equal dtypes without coming here).
template <typename Dst>
void ConvertTo(const void* src, DType src_dtype, int64_t n, void* dst) {
  switch (src_dtype) {
    case DType::kF32:
      return ConvertTyped<float, Dst>(src, n, dst);
    case DType::kBF16:
      return ConvertTyped<bf16, Dst>(src, n, dst);
    default:
      return ConvertTyped<f16, Dst>(src, n, dst);
  }
}

void ConvertElements(const void* src, DType src_dtype, int64_t n, DType dtype, void* dst) {
  if (dtype == DType::kF32) {
    ConvertTo<float>(src, src_dtype, n, dst);
  } else {
    ConvertTo<bf16>(src, src_dtype, n, dst);
  }
}

}  // namespace

bool IsGivenTensor(const Tensor& t) { return t.data() != nullptr || t.rank() > 0; }

absl::Status CheckHostWeight(absl::string_view prefix, absl::string_view name, const Tensor& t,
                             const Shape& want, bool wanted) {
  const auto invalid = [prefix, name](auto&&... what) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": ", name, what...));
  };
  if (!wanted) {
    if (IsGivenTensor(t)) return invalid(" is given but the config has no use for it");
    return absl::OkStatus();
  }
  if (!IsGivenTensor(t)) return invalid(" is missing");
  if (t.shape() != want) {
    return invalid(" has shape ", t.shape().ToString(), ", expected ", want.ToString());
  }
  if (!IsHostWeightDType(t.dtype())) {
    return invalid(" has dtype ", DTypeName(t.dtype()), ", expected f32, bf16 or f16");
  }
  if (t.device() != Device::Cpu()) {
    return invalid(" is on ", t.device().ToString(), ", expected cpu");
  }
  if (t.data() == nullptr) return invalid(" has no data");
  return absl::OkStatus();
}

absl::Status CopyHostAs(Backend* backend, absl::Span<const Tensor* const> parts, DType dtype,
                        void* dst) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy_host_as: dtype=", DTypeName(dtype), " must be f32 or bf16"));
  }
  const int64_t es = DTypeSize(dtype);
  auto* out = static_cast<uint8_t*>(dst);
  std::vector<uint8_t> bounce;
  for (const Tensor* part : parts) {
    if (!IsHostWeightDType(part->dtype())) {
      return absl::InvalidArgumentError(
          absl::StrCat("copy_host_as: ", part->ToString(), " is not f32, bf16 or f16"));
    }
    const int64_t n = part->numel();
    if (part->dtype() == dtype) {
      MOE_RETURN_IF_ERROR(backend->CopyFromHost(out, part->data(), n * es));
      out += n * es;
      continue;
    }
    const int64_t chunk = static_cast<int64_t>(kBounceBytes) / es;
    bounce.resize(static_cast<size_t>(std::min(n, chunk) * es));
    const auto* src = static_cast<const uint8_t*>(part->data());
    const int64_t src_es = DTypeSize(part->dtype());
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t count = std::min(chunk, n - begin);
      ConvertElements(src + begin * src_es, part->dtype(), count, dtype, bounce.data());
      MOE_RETURN_IF_ERROR(backend->CopyFromHost(out, bounce.data(), count * es));
      out += count * es;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Buffer>> UploadHostAs(Backend* backend, Allocator* allocator,
                                                     absl::Span<const Tensor* const> parts,
                                                     DType dtype) {
  int64_t elems = 0;
  for (const Tensor* part : parts) elems += part->numel();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer,
                       allocator->Allocate(static_cast<size_t>(elems * DTypeSize(dtype))));
  MOE_RETURN_IF_ERROR(CopyHostAs(backend, parts, dtype, buffer->data()));
  return buffer;
}

absl::StatusOr<std::unique_ptr<Buffer>> UploadFloats(
    Backend* backend, Allocator* allocator, absl::Span<const std::vector<float>* const> parts) {
  size_t bytes = 0;
  for (const std::vector<float>* part : parts) bytes += part->size() * sizeof(float);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer, allocator->Allocate(bytes));
  auto* out = static_cast<uint8_t*>(buffer->data());
  for (const std::vector<float>* part : parts) {
    MOE_RETURN_IF_ERROR(backend->CopyFromHost(out, part->data(), part->size() * sizeof(float)));
    out += part->size() * sizeof(float);
  }
  return buffer;
}

absl::StatusOr<std::unique_ptr<PackedWeights>> PackLinear(Backend* backend, Allocator* allocator,
                                                          absl::Span<const Tensor* const> parts,
                                                          int64_t n, int64_t k, DType dtype) {
  int64_t elems = 0;
  for (const Tensor* part : parts) elems += part->numel();
  if (elems != n * k) {
    return absl::InternalError(absl::StrCat("pack_linear: the parts hold ", elems, " values, W [",
                                            n, ", ", k, "] needs ", n * k));
  }
  // W itself is the transposed B: the packing reads its rows, so it is never transposed here.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> plain,
                       UploadHostAs(backend, allocator, parts, dtype));
  return PackDeviceLinear(backend, plain->data(), n, k, dtype);
}

absl::StatusOr<std::unique_ptr<PackedWeights>> PackDeviceLinear(Backend* backend, const void* w,
                                                                int64_t n, int64_t k, DType dtype) {
  PackWeightsArgs args;
  args.batch = 1;
  args.k = k;
  args.n = n;
  args.b = w;
  args.dtype = dtype;
  args.ldb = k;
  args.trans_b = true;
  return backend->PackWeights(args);
}

}  // namespace moe
