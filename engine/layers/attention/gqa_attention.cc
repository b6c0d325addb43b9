#include "engine/layers/attention/gqa_attention.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/core/shape.h"
#include "engine/layers/host_weights.h"
#include "kernels/dtype.h"
#include "kernels/rope_table.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("attention: ", what));
}

}  // namespace

absl::Status GqaAttentionConfig::Validate() const {
  const auto positive = [](absl::string_view name, int64_t v) {
    return v > 0 ? absl::OkStatus() : Invalid(absl::StrCat(name, "=", v, " must be > 0"));
  };
  MOE_RETURN_IF_ERROR(positive("hidden", hidden));
  MOE_RETURN_IF_ERROR(positive("heads", heads));
  MOE_RETURN_IF_ERROR(positive("kv_heads", kv_heads));
  MOE_RETURN_IF_ERROR(positive("head_dim", head_dim));
  MOE_RETURN_IF_ERROR(positive("max_positions", max_positions));
  if (heads % kv_heads != 0) {
    return Invalid(absl::StrCat("heads=", heads, " is not a multiple of kv_heads=", kv_heads));
  }
  if (head_dim % 2 != 0) return Invalid(absl::StrCat("head_dim=", head_dim, " must be even"));
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return Invalid(absl::StrCat("rope_theta=", rope_theta, " must be finite and > 0"));
  }
  if (sliding_window < 0) {
    return Invalid(absl::StrCat("sliding_window=", sliding_window, " must be >= 0"));
  }
  if (!(rms_eps >= 0) || !std::isfinite(rms_eps)) {
    return Invalid(absl::StrCat("rms_eps=", rms_eps, " must be finite and >= 0"));
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return Invalid(absl::StrCat("dtype=", DTypeName(dtype), " must be f32 or bf16"));
  }
  return absl::OkStatus();
}

GqaAttention::GqaAttention(const GqaAttentionConfig& config, Backend* backend, Allocator* allocator)
    : config_(config), backend_(backend), allocator_(allocator), workspace_(allocator) {}

GqaAttention::~GqaAttention() = default;

absl::StatusOr<std::unique_ptr<GqaAttention>> GqaAttention::Create(
    const GqaAttentionConfig& config, const GqaAttentionWeights& weights, Backend* backend,
    Allocator* allocator) {
  MOE_RETURN_IF_ERROR(config.Validate());
  const int64_t d = config.hidden, hd = config.head_dim;
  const int64_t q_rows = config.heads * hd, kv_rows = config.kv_heads * hd;
  MOE_RETURN_IF_ERROR(CheckHostWeight("attention", "q_proj", weights.q_proj, Shape{q_rows, d}));
  MOE_RETURN_IF_ERROR(CheckHostWeight("attention", "k_proj", weights.k_proj, Shape{kv_rows, d}));
  MOE_RETURN_IF_ERROR(CheckHostWeight("attention", "v_proj", weights.v_proj, Shape{kv_rows, d}));
  MOE_RETURN_IF_ERROR(CheckHostWeight("attention", "o_proj", weights.o_proj, Shape{d, q_rows}));
  MOE_RETURN_IF_ERROR(
      CheckHostWeight("attention", "q_bias", weights.q_bias, Shape{q_rows}, config.qkv_bias));
  MOE_RETURN_IF_ERROR(
      CheckHostWeight("attention", "k_bias", weights.k_bias, Shape{kv_rows}, config.qkv_bias));
  MOE_RETURN_IF_ERROR(
      CheckHostWeight("attention", "v_bias", weights.v_bias, Shape{kv_rows}, config.qkv_bias));
  MOE_RETURN_IF_ERROR(
      CheckHostWeight("attention", "q_norm", weights.q_norm, Shape{hd}, config.qk_norm));
  MOE_RETURN_IF_ERROR(
      CheckHostWeight("attention", "k_norm", weights.k_norm, Shape{hd}, config.qk_norm));

  std::unique_ptr<GqaAttention> layer(new GqaAttention(config, backend, allocator));
  layer->qkv_cols_ = q_rows + 2 * kv_rows;

  // The rows of q, k and v stacked: one [qkv_cols, D] matrix, so one GEMM reads x once.
  MOE_ASSIGN_OR_RETURN(
      layer->qkv_weight_,
      PackLinear(backend, allocator, {&weights.q_proj, &weights.k_proj, &weights.v_proj},
                 layer->qkv_cols_, d, config.dtype));
  MOE_ASSIGN_OR_RETURN(layer->o_weight_,
                       PackLinear(backend, allocator, {&weights.o_proj}, d, q_rows, config.dtype));

  if (config.qkv_bias) {
    // Bias in f32, added to the f32 GEMM result before the one rounding (torch's addmm).
    MOE_ASSIGN_OR_RETURN(
        layer->qkv_bias_,
        UploadHostAs(backend, allocator, {&weights.q_bias, &weights.k_bias, &weights.v_bias},
                     DType::kF32));
  }
  if (config.qk_norm) {
    MOE_ASSIGN_OR_RETURN(
        layer->norms_,
        UploadHostAs(backend, allocator, {&weights.q_norm, &weights.k_norm}, config.dtype));
  }

  RopeTableOptions rope;
  rope.rotary_dim = hd;
  rope.max_positions = config.max_positions;
  rope.theta = config.rope_theta;
  MOE_ASSIGN_OR_RETURN(const RopeTable table, MakeRopeTable(rope));
  MOE_ASSIGN_OR_RETURN(layer->rope_, UploadFloats(backend, allocator, {&table.cos, &table.sin}));
  return layer;
}

size_t GqaAttention::WorkspaceBytes(int64_t tokens) const {
  const size_t es = DTypeSize(config_.dtype);
  size_t bytes = Workspace::Aligned(tokens * qkv_cols_ * es) +
                 Workspace::Aligned(tokens * config_.heads * config_.head_dim * es);
  if (config_.qkv_bias && config_.dtype != DType::kF32) {
    bytes += Workspace::Aligned(tokens * qkv_cols_ * sizeof(float));
  }
  return bytes;
}

absl::Status GqaAttention::ReserveTokens(int64_t tokens) {
  if (tokens < 0) return Invalid(absl::StrCat("ReserveTokens: tokens=", tokens, " must be >= 0"));
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(WorkspaceBytes(tokens)));
  reserved_tokens_ = std::max(reserved_tokens_, tokens);
  return absl::OkStatus();
}

absl::Status GqaAttention::Forward(const Tensor& x, const GqaAttentionBatch& batch,
                                   const KvCacheView& cache, const Tensor& out) {
  MOE_RETURN_IF_ERROR(CheckAttentionInputs(
      {"attention", config_.hidden, config_.kv_heads, config_.head_dim, config_.dtype,
       backend_->device()},
      x, batch, cache, out));
  const int64_t t = x.dim(0);
  if (t == 0) return absl::OkStatus();
  if (t > reserved_tokens_) MOE_RETURN_IF_ERROR(ReserveTokens(t));
  workspace_.Reset();
  const DType dtype = config_.dtype;
  const int64_t h = config_.heads, kv = config_.kv_heads, hd = config_.head_dim;
  const int64_t n = qkv_cols_, es = DTypeSize(dtype);
  MOE_ASSIGN_OR_RETURN(const Tensor qkv, workspace_.Take(dtype, Shape{t, n}));
  MOE_ASSIGN_OR_RETURN(const Tensor attn, workspace_.Take(dtype, Shape{t, h * hd}));
  auto* qkv_data = static_cast<uint8_t*>(qkv.data());

  GemmArgs proj;
  proj.m = t;
  proj.n = n;
  proj.k = config_.hidden;
  proj.a = x.data();
  proj.a_dtype = dtype;
  proj.lda = config_.hidden;
  proj.b_dtype = dtype;
  proj.packed_b = qkv_weight_.get();
  proj.c = qkv.data();
  proj.c_dtype = dtype;
  proj.ldc = n;
  proj.row_invariant = config_.batch_invariant;
  if (config_.qkv_bias) {
    // GEMM and bias in f32, then one rounding to the run dtype.
    Tensor acc = qkv;
    if (dtype != DType::kF32) {
      MOE_ASSIGN_OR_RETURN(acc, workspace_.Take(DType::kF32, Shape{t, n}));
    }
    proj.c = acc.data();
    proj.c_dtype = DType::kF32;
    MOE_RETURN_IF_ERROR(backend_->Gemm(proj));
    for (int64_t r = 0; r < t; ++r) {
      AddArgs add;
      add.n = n;
      add.dtype = DType::kF32;
      add.a = static_cast<float*>(acc.data()) + r * n;
      add.b = qkv_bias_->data();
      add.out = static_cast<float*>(acc.data()) + r * n;
      MOE_RETURN_IF_ERROR(backend_->Add(add));
    }
    if (dtype != DType::kF32) {
      CastArgs cast;
      cast.n = t * n;
      cast.src = acc.data();
      cast.src_dtype = DType::kF32;
      cast.dst = qkv.data();
      cast.dst_dtype = dtype;
      MOE_RETURN_IF_ERROR(backend_->Cast(cast));
    }
  } else {
    MOE_RETURN_IF_ERROR(backend_->Gemm(proj));
  }

  uint8_t* q = qkv_data;
  uint8_t* k = qkv_data + h * hd * es;
  uint8_t* v = qkv_data + (h + kv) * hd * es;
  if (config_.qk_norm) {
    // Heads of one token are contiguous rows of hd, and tokens are n apart in the fused
    // layout: one call for the q heads of every token, one for the k heads.
    const auto* norms = static_cast<const uint8_t*>(norms_->data());
    RmsNormArgs norm;
    norm.cols = hd;
    norm.dtype = dtype;
    norm.eps = config_.rms_eps;
    norm.x_ld = norm.out_ld = hd;
    norm.group_ld = n;
    norm.rows = t * h;
    norm.rows_per_group = h;
    norm.x = norm.out = q;
    norm.weight = norms;
    MOE_RETURN_IF_ERROR(backend_->RmsNorm(norm));
    norm.rows = t * kv;
    norm.rows_per_group = kv;
    norm.x = norm.out = k;
    norm.weight = norms + hd * es;
    MOE_RETURN_IF_ERROR(backend_->RmsNorm(norm));
  }

  const auto* rope_table = static_cast<const float*>(rope_->data());
  RopeArgs rope;
  rope.rows = t;
  rope.head_dim = hd;
  rope.rotary_dim = hd;
  rope.style = RopeStyle::kHalf;
  rope.dtype = dtype;
  rope.ld = n;
  rope.positions = static_cast<const int32_t*>(batch.positions.data());
  rope.cos = rope_table;
  rope.sin = rope_table + config_.max_positions * (hd / 2);
  rope.max_positions = config_.max_positions;
  rope.heads = h;
  rope.x = q;
  MOE_RETURN_IF_ERROR(backend_->Rope(rope));
  rope.heads = kv;
  rope.x = k;
  MOE_RETURN_IF_ERROR(backend_->Rope(rope));

  CachedAttention att;
  att.heads = h;
  att.kv_heads = kv;
  att.head_dim = hd;
  att.dtype = dtype;
  att.q = q;
  att.q_ld = n;
  att.k = k;
  att.k_ld = n;
  att.v = v;
  att.v_ld = n;
  att.sliding_window = config_.sliding_window;
  att.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  att.out = attn.data();
  MOE_RETURN_IF_ERROR(WriteKvAndAttend(backend_, att, batch, cache));

  GemmArgs o;
  o.m = t;
  o.n = config_.hidden;
  o.k = h * hd;
  o.a = attn.data();
  o.a_dtype = dtype;
  o.lda = h * hd;
  o.b_dtype = dtype;
  o.packed_b = o_weight_.get();
  o.c = out.data();
  o.c_dtype = dtype;
  o.ldc = config_.hidden;
  o.row_invariant = config_.batch_invariant;
  return backend_->Gemm(o);
}

}  // namespace moe
