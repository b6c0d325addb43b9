#include "engine/layers/host_weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// A host value of `t` (f32, bf16 or f16) at flat index `i`, as a float.
float HostValue(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32:
      return static_cast<const float*>(t.data())[i];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const bf16*>(t.data())[i]);
    default:
      return F16ToFloat(static_cast<const f16*>(t.data())[i]);
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
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16) {
    return invalid(" has dtype ", DTypeName(t.dtype()), ", expected f32, bf16 or f16");
  }
  if (t.device() != Device::Cpu()) {
    return invalid(" is on ", t.device().ToString(), ", expected cpu");
  }
  if (t.data() == nullptr) return invalid(" has no data");
  return absl::OkStatus();
}

void AppendHostFloats(const Tensor& t, std::vector<float>* out) {
  const int64_t n = t.numel();
  out->reserve(out->size() + n);
  for (int64_t i = 0; i < n; ++i) out->push_back(HostValue(t, i));
}

std::vector<uint8_t> EncodeFloats(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> out(v.size() * DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    auto* dst = reinterpret_cast<bf16*>(out.data());
    for (size_t i = 0; i < v.size(); ++i) dst[i] = FloatToBf16(v[i]);
  }
  return out;
}

void AppendHostAs(const Tensor& t, DType dtype, std::vector<uint8_t>* out) {
  const int64_t n = t.numel();
  const size_t es = DTypeSize(dtype);
  const size_t start = out->size();
  out->resize(start + n * es);
  uint8_t* dst = out->data() + start;
  for (int64_t i = 0; i < n; ++i) {
    const float v = HostValue(t, i);
    if (dtype == DType::kF32) {
      std::memcpy(dst + i * es, &v, es);
    } else {
      const bf16 b = FloatToBf16(v);
      std::memcpy(dst + i * es, &b, es);
    }
  }
}

absl::StatusOr<std::unique_ptr<Buffer>> UploadBytes(Backend* backend, Allocator* allocator,
                                                    const std::vector<uint8_t>& bytes) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer, allocator->Allocate(bytes.size()));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(buffer->data(), bytes.data(), bytes.size()));
  return buffer;
}

absl::StatusOr<std::unique_ptr<PackedWeights>> PackLinear(Backend* backend,
                                                          const std::vector<uint8_t>& bytes,
                                                          int64_t n, int64_t k, DType dtype) {
  PackWeightsArgs args;
  args.batch = 1;
  args.k = k;
  args.n = n;
  args.b = bytes.data();
  args.dtype = dtype;
  args.ldb = k;
  args.trans_b = true;
  return backend->PackWeights(args);
}

}  // namespace moe
