#include "engine/layers/mlp/dense_mlp.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/core/shape.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("dense_mlp: ", what));
}

// A host weight: expected shape, float dtype, cpu, data. `name` is the DenseMlpWeights field.
absl::Status CheckWeight(absl::string_view name, const Tensor& t, const Shape& want) {
  if (t.data() == nullptr && t.rank() == 0) return Invalid(absl::StrCat(name, " is missing"));
  if (t.shape() != want) {
    return Invalid(
        absl::StrCat(name, " has shape ", t.shape().ToString(), ", expected ", want.ToString()));
  }
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16) {
    return Invalid(
        absl::StrCat(name, " has dtype ", DTypeName(t.dtype()), ", expected f32, bf16 or f16"));
  }
  if (t.device() != Device::Cpu()) {
    return Invalid(absl::StrCat(name, " is on ", t.device().ToString(), ", expected cpu"));
  }
  if (t.data() == nullptr) return Invalid(absl::StrCat(name, " has no data"));
  return absl::OkStatus();
}

// Appends the values of a host tensor of f32, bf16 or f16 to `out` in `dtype` storage (f32 or
// bf16), rounding to nearest even.
void AppendAs(const Tensor& t, DType dtype, std::vector<uint8_t>* out) {
  const int64_t n = t.numel();
  const size_t es = DTypeSize(dtype);
  const size_t start = out->size();
  out->resize(start + n * es);
  uint8_t* dst = out->data() + start;
  for (int64_t i = 0; i < n; ++i) {
    float v;
    switch (t.dtype()) {
      case DType::kF32:
        v = static_cast<const float*>(t.data())[i];
        break;
      case DType::kBF16:
        v = Bf16ToFloat(static_cast<const bf16*>(t.data())[i]);
        break;
      default:
        v = F16ToFloat(static_cast<const f16*>(t.data())[i]);
        break;
    }
    if (dtype == DType::kF32) {
      std::memcpy(dst + i * es, &v, es);
    } else {
      const bf16 b = FloatToBf16(v);
      std::memcpy(dst + i * es, &b, es);
    }
  }
}

// Packs a host matrix [n, k] (nn.Linear's [out, in]) as a GEMM's B = W^T [k, n].
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

}  // namespace

absl::Status DenseMlpConfig::Validate() const {
  if (hidden <= 0) return Invalid(absl::StrCat("hidden=", hidden, " must be > 0"));
  if (inter <= 0) return Invalid(absl::StrCat("inter=", inter, " must be > 0"));
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return Invalid(absl::StrCat("dtype=", DTypeName(dtype), " must be f32 or bf16"));
  }
  return absl::OkStatus();
}

DenseMlp::DenseMlp(const DenseMlpConfig& config, Backend* backend, Allocator* allocator)
    : config_(config), backend_(backend), workspace_(allocator) {}

DenseMlp::~DenseMlp() = default;

absl::StatusOr<std::unique_ptr<DenseMlp>> DenseMlp::Create(const DenseMlpConfig& config,
                                                           const DenseMlpWeights& weights,
                                                           Backend* backend, Allocator* allocator) {
  MOE_RETURN_IF_ERROR(config.Validate());
  const int64_t d = config.hidden, i = config.inter;
  MOE_RETURN_IF_ERROR(CheckWeight("gate_proj", weights.gate_proj, Shape{i, d}));
  MOE_RETURN_IF_ERROR(CheckWeight("up_proj", weights.up_proj, Shape{i, d}));
  MOE_RETURN_IF_ERROR(CheckWeight("down_proj", weights.down_proj, Shape{d, i}));

  std::unique_ptr<DenseMlp> layer(new DenseMlp(config, backend, allocator));
  // gate rows then up rows: one [2I, D] matrix, so one GEMM reads x once and writes the
  // [gate | up] rows SwiGlu expects.
  std::vector<uint8_t> bytes;
  AppendAs(weights.gate_proj, config.dtype, &bytes);
  AppendAs(weights.up_proj, config.dtype, &bytes);
  MOE_ASSIGN_OR_RETURN(layer->gate_up_weight_, PackLinear(backend, bytes, 2 * i, d, config.dtype));
  bytes.clear();
  AppendAs(weights.down_proj, config.dtype, &bytes);
  MOE_ASSIGN_OR_RETURN(layer->down_weight_, PackLinear(backend, bytes, d, i, config.dtype));
  return layer;
}

size_t DenseMlp::WorkspaceBytes(int64_t tokens) const {
  const size_t es = DTypeSize(config_.dtype);
  return Workspace::Aligned(tokens * 2 * config_.inter * es) +
         Workspace::Aligned(tokens * config_.inter * es);
}

absl::Status DenseMlp::ReserveTokens(int64_t tokens) {
  if (tokens < 0) return Invalid(absl::StrCat("ReserveTokens: tokens=", tokens, " must be >= 0"));
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(WorkspaceBytes(tokens)));
  reserved_tokens_ = std::max(reserved_tokens_, tokens);
  return absl::OkStatus();
}

absl::Status DenseMlp::CheckInputs(const Tensor& x, const Tensor& out) const {
  const Device device = backend_->device();
  const int64_t d = config_.hidden;
  if (x.rank() != 2 || x.dim(1) != d) {
    return Invalid(absl::StrCat("x has shape ", x.shape().ToString(), ", expected [T, ", d, "]"));
  }
  const Shape want{x.dim(0), d};
  if (out.shape() != want) {
    return Invalid(absl::StrCat("out has shape ", out.shape().ToString(), ", expected ",
                                want.ToString(), " (x's shape)"));
  }
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"x", &x}, {"out", &out}}) {
    if (t->dtype() != config_.dtype) {
      return Invalid(absl::StrCat(name, " has dtype ", DTypeName(t->dtype()), ", expected ",
                                  DTypeName(config_.dtype)));
    }
    if (t->device() != device) {
      return Invalid(absl::StrCat(name, " is on ", t->device().ToString(), ", expected ",
                                  device.ToString(), " (the backend's device)"));
    }
    if (t->data() == nullptr && t->numel() > 0) {
      return Invalid(absl::StrCat(name, " has no data"));
    }
  }
  return absl::OkStatus();
}

absl::Status DenseMlp::Forward(const Tensor& x, const Tensor& out) {
  MOE_RETURN_IF_ERROR(CheckInputs(x, out));
  const int64_t t = x.dim(0);
  if (t == 0) return absl::OkStatus();
  if (t > reserved_tokens_) MOE_RETURN_IF_ERROR(ReserveTokens(t));
  workspace_.Reset();
  const DType dtype = config_.dtype;
  const int64_t d = config_.hidden, i = config_.inter;
  MOE_ASSIGN_OR_RETURN(const Tensor gate_up, workspace_.Take(dtype, Shape{t, 2 * i}));
  MOE_ASSIGN_OR_RETURN(const Tensor act, workspace_.Take(dtype, Shape{t, i}));

  GemmArgs up;
  up.m = t;
  up.n = 2 * i;
  up.k = d;
  up.a = x.data();
  up.a_dtype = dtype;
  up.lda = d;
  up.b_dtype = dtype;
  up.packed_b = gate_up_weight_.get();
  up.c = gate_up.data();
  up.c_dtype = dtype;
  up.ldc = 2 * i;
  MOE_RETURN_IF_ERROR(backend_->Gemm(up));

  SwiGluArgs swiglu;
  swiglu.rows = t;
  swiglu.inter = i;
  swiglu.dtype = dtype;
  swiglu.gate_up = gate_up.data();
  swiglu.gate_up_ld = 2 * i;
  swiglu.out = act.data();
  swiglu.out_ld = i;
  MOE_RETURN_IF_ERROR(backend_->SwiGlu(swiglu));

  // x is no longer read from here on, which is why out may alias it.
  GemmArgs down;
  down.m = t;
  down.n = d;
  down.k = i;
  down.a = act.data();
  down.a_dtype = dtype;
  down.lda = i;
  down.b_dtype = dtype;
  down.packed_b = down_weight_.get();
  down.c = out.data();
  down.c_dtype = dtype;
  down.ldc = d;
  return backend_->Gemm(down);
}

}  // namespace moe
