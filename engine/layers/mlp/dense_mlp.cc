#include "engine/layers/mlp/dense_mlp.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/core/shape.h"
#include "engine/layers/host_weights.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("dense_mlp: ", what));
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
  MOE_RETURN_IF_ERROR(CheckHostWeight("dense_mlp", "gate_proj", weights.gate_proj, Shape{i, d}));
  MOE_RETURN_IF_ERROR(CheckHostWeight("dense_mlp", "up_proj", weights.up_proj, Shape{i, d}));
  MOE_RETURN_IF_ERROR(CheckHostWeight("dense_mlp", "down_proj", weights.down_proj, Shape{d, i}));

  std::unique_ptr<DenseMlp> layer(new DenseMlp(config, backend, allocator));
  // gate rows then up rows: one [2I, D] matrix, so one GEMM reads x once and writes the
  // [gate | up] rows SwiGlu expects.
  MOE_ASSIGN_OR_RETURN(layer->gate_up_weight_,
                       PackLinear(backend, allocator, {&weights.gate_proj, &weights.up_proj}, 2 * i,
                                  d, config.dtype));
  MOE_ASSIGN_OR_RETURN(layer->down_weight_,
                       PackLinear(backend, allocator, {&weights.down_proj}, d, i, config.dtype));
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
  up.row_invariant = config_.batch_invariant;
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
  down.row_invariant = config_.batch_invariant;
  return backend_->Gemm(down);
}

}  // namespace moe
