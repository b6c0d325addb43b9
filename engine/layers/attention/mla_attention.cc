#include "engine/layers/attention/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/core/shape.h"
#include "engine/layers/host_weights.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

constexpr absl::string_view kPrefix = "mla_attention";

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(kPrefix, ": ", what));
}

// HF's yarn_get_mscale, in Python's order of operations.
double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

double MlaAttentionConfig::softmax_scale() const {
  double scale = std::pow(static_cast<double>(qk_head_dim()), -0.5);
  if (rope_type != RopeScalingType::kDefault && mscale_all_dim != 0.0) {
    const double m = YarnMscale(yarn_factor, mscale_all_dim);
    scale = scale * m * m;
  }
  return scale;
}

absl::Status MlaAttentionConfig::Validate() const {
  const auto positive = [](absl::string_view name, int64_t v) {
    return v > 0 ? absl::OkStatus() : Invalid(absl::StrCat(name, "=", v, " must be > 0"));
  };
  const auto finite = [](absl::string_view name, double v, bool zero_ok) {
    if (std::isfinite(v) && (v > 0 || (zero_ok && v == 0))) return absl::OkStatus();
    return Invalid(absl::StrCat(name, "=", v, " must be finite and ", zero_ok ? ">= 0" : "> 0"));
  };
  MOE_RETURN_IF_ERROR(positive("hidden", hidden));
  MOE_RETURN_IF_ERROR(positive("heads", heads));
  if (q_lora_rank < 0) {
    return Invalid(absl::StrCat("q_lora_rank=", q_lora_rank, " must be >= 0 (0: q_proj)"));
  }
  MOE_RETURN_IF_ERROR(positive("kv_lora_rank", kv_lora_rank));
  MOE_RETURN_IF_ERROR(positive("qk_nope_head_dim", qk_nope_head_dim));
  MOE_RETURN_IF_ERROR(positive("qk_rope_head_dim", qk_rope_head_dim));
  MOE_RETURN_IF_ERROR(positive("v_head_dim", v_head_dim));
  if (qk_rope_head_dim % 2 != 0) {
    return Invalid(absl::StrCat("qk_rope_head_dim=", qk_rope_head_dim, " must be even"));
  }
  if (v_head_dim > qk_head_dim()) {
    return Invalid(absl::StrCat("v_head_dim=", v_head_dim,
                                " exceeds qk_nope_head_dim + qk_rope_head_dim=", qk_head_dim(),
                                " (the cache's head dim)"));
  }
  MOE_RETURN_IF_ERROR(finite("rope_theta", rope_theta, false));
  if (rope_type != RopeScalingType::kDefault && rope_type != RopeScalingType::kYarn) {
    return Invalid(
        absl::StrCat("rope_type=", static_cast<int>(rope_type), " is not a RopeScalingType"));
  }
  if (rope_type == RopeScalingType::kYarn) {
    if (!(yarn_factor >= 1.0) || !std::isfinite(yarn_factor)) {
      return Invalid(absl::StrCat("yarn_factor=", yarn_factor, " must be finite and >= 1"));
    }
    MOE_RETURN_IF_ERROR(
        positive("original_max_position_embeddings", original_max_position_embeddings));
    MOE_RETURN_IF_ERROR(finite("beta_fast", beta_fast, false));
    MOE_RETURN_IF_ERROR(finite("beta_slow", beta_slow, false));
    MOE_RETURN_IF_ERROR(finite("mscale", mscale, true));
    MOE_RETURN_IF_ERROR(finite("mscale_all_dim", mscale_all_dim, true));
  }
  MOE_RETURN_IF_ERROR(positive("max_positions", max_positions));
  if (!(rms_eps >= 0) || !std::isfinite(rms_eps)) {
    return Invalid(absl::StrCat("rms_eps=", rms_eps, " must be finite and >= 0"));
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return Invalid(absl::StrCat("dtype=", DTypeName(dtype), " must be f32 or bf16"));
  }
  return absl::OkStatus();
}

MlaAttention::MlaAttention(const MlaAttentionConfig& config, Backend* backend, Allocator* allocator)
    : config_(config), backend_(backend), allocator_(allocator), workspace_(allocator) {}

MlaAttention::~MlaAttention() = default;

absl::StatusOr<std::unique_ptr<MlaAttention>> MlaAttention::Create(
    const MlaAttentionConfig& config, const MlaAttentionWeights& weights, Backend* backend,
    Allocator* allocator) {
  MOE_RETURN_IF_ERROR(config.Validate());
  const int64_t d = config.hidden, h = config.heads, qk = config.qk_head_dim();
  const int64_t ql = config.q_lora_rank, kvl = config.kv_lora_rank;
  const int64_t rope = config.qk_rope_head_dim, nope = config.qk_nope_head_dim;
  const int64_t v = config.v_head_dim;
  const bool lora = ql > 0, bias = config.attention_bias;
  const auto check = [&](absl::string_view name, const Tensor& t, const Shape& want, bool wanted) {
    return CheckHostWeight(kPrefix, name, t, want, wanted);
  };
  MOE_RETURN_IF_ERROR(check("q_a_proj", weights.q_a_proj, Shape{ql, d}, lora));
  MOE_RETURN_IF_ERROR(check("q_a_layernorm", weights.q_a_layernorm, Shape{ql}, lora));
  MOE_RETURN_IF_ERROR(check("q_b_proj", weights.q_b_proj, Shape{h * qk, ql}, lora));
  MOE_RETURN_IF_ERROR(check("q_proj", weights.q_proj, Shape{h * qk, d}, !lora));
  MOE_RETURN_IF_ERROR(
      check("kv_a_proj_with_mqa", weights.kv_a_proj_with_mqa, Shape{kvl + rope, d}, true));
  MOE_RETURN_IF_ERROR(check("kv_a_layernorm", weights.kv_a_layernorm, Shape{kvl}, true));
  MOE_RETURN_IF_ERROR(check("kv_b_proj", weights.kv_b_proj, Shape{h * (nope + v), kvl}, true));
  MOE_RETURN_IF_ERROR(check("o_proj", weights.o_proj, Shape{d, h * v}, true));
  MOE_RETURN_IF_ERROR(check("q_a_bias", weights.q_a_bias, Shape{ql}, bias && lora));
  MOE_RETURN_IF_ERROR(check("kv_a_bias", weights.kv_a_bias, Shape{kvl + rope}, bias));
  MOE_RETURN_IF_ERROR(check("o_bias", weights.o_bias, Shape{d}, bias));

  std::unique_ptr<MlaAttention> layer(new MlaAttention(config, backend, allocator));
  layer->q_cols_ = lora ? ql : h * qk;
  layer->x_cols_ = layer->q_cols_ + kvl + rope;
  layer->scale_ = static_cast<float>(config.softmax_scale());

  // Both projections of x stacked, [q_a_proj | q_proj; kv_a_proj_with_mqa]: one GEMM reads x once.
  const Tensor& q_first = lora ? weights.q_a_proj : weights.q_proj;
  MOE_ASSIGN_OR_RETURN(layer->x_weight_,
                       PackLinear(backend, allocator, {&q_first, &weights.kv_a_proj_with_mqa},
                                  layer->x_cols_, d, config.dtype));
  if (lora) {
    MOE_ASSIGN_OR_RETURN(layer->q_b_weight_, PackLinear(backend, allocator, {&weights.q_b_proj},
                                                        h * qk, ql, config.dtype));
  }
  MOE_ASSIGN_OR_RETURN(layer->kv_b_weight_, PackLinear(backend, allocator, {&weights.kv_b_proj},
                                                       h * (nope + v), kvl, config.dtype));
  MOE_ASSIGN_OR_RETURN(layer->o_weight_,
                       PackLinear(backend, allocator, {&weights.o_proj}, d, h * v, config.dtype));

  if (bias) {
    // Biases in f32, added to the f32 GEMM result before the one rounding (torch's addmm). q_proj
    // has none, so without q_a_proj the bias covers only the kv_a columns.
    layer->x_bias_from_ = lora ? 0 : layer->q_cols_;
    std::vector<const Tensor*> x_bias;
    if (lora) x_bias.push_back(&weights.q_a_bias);
    x_bias.push_back(&weights.kv_a_bias);
    MOE_ASSIGN_OR_RETURN(layer->x_bias_, UploadHostAs(backend, allocator, x_bias, DType::kF32));
    MOE_ASSIGN_OR_RETURN(layer->o_bias_,
                         UploadHostAs(backend, allocator, {&weights.o_bias}, DType::kF32));
  }
  std::vector<const Tensor*> norms;
  if (lora) norms.push_back(&weights.q_a_layernorm);
  norms.push_back(&weights.kv_a_layernorm);
  MOE_ASSIGN_OR_RETURN(layer->norms_, UploadHostAs(backend, allocator, norms, config.dtype));

  RopeTableOptions options;
  options.rotary_dim = rope;
  options.max_positions = config.max_positions;
  options.theta = config.rope_theta;
  options.type = config.rope_type;
  if (config.rope_type == RopeScalingType::kYarn) {
    options.factor = config.yarn_factor;
    options.original_max_position_embeddings = config.original_max_position_embeddings;
    options.beta_fast = config.beta_fast;
    options.beta_slow = config.beta_slow;
    options.mscale = config.mscale;
    options.mscale_all_dim = config.mscale_all_dim;
  }
  MOE_ASSIGN_OR_RETURN(const RopeTable table, MakeRopeTable(options));
  MOE_ASSIGN_OR_RETURN(layer->rope_, UploadFloats(backend, allocator, {&table.cos, &table.sin}));
  return layer;
}

size_t MlaAttention::WorkspaceBytes(int64_t tokens) const {
  const size_t es = DTypeSize(config_.dtype);
  const int64_t h = config_.heads, qk = config_.qk_head_dim(), v = config_.v_head_dim;
  size_t bytes = Workspace::Aligned(tokens * x_cols_ * es) +                             // x GEMM
                 Workspace::Aligned(tokens * h * (config_.qk_nope_head_dim + v) * es) +  // kv_b
                 Workspace::Aligned(tokens * h * qk * es) +                              // K rows
                 Workspace::Aligned(tokens * h * qk * es) +  // attention out
                 Workspace::Aligned(tokens * h * v * es);    // its first v columns per head
  if (config_.q_lora_rank > 0) bytes += Workspace::Aligned(tokens * h * qk * es);  // q_b
  if (config_.attention_bias && config_.dtype != DType::kF32) {
    bytes += Workspace::Aligned(tokens * std::max(x_cols_, config_.hidden) * sizeof(float));
  }
  return bytes;
}

absl::Status MlaAttention::ReserveTokens(int64_t tokens) {
  if (tokens < 0) return Invalid(absl::StrCat("ReserveTokens: tokens=", tokens, " must be >= 0"));
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(WorkspaceBytes(tokens)));
  if (tokens > 0 && tokens > std::max<int64_t>(reserved_tokens_, 0)) {
    const int64_t rows = tokens * config_.heads;
    const size_t v_bytes = rows * config_.qk_head_dim() * DTypeSize(config_.dtype);
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> v_rows, allocator_->Allocate(v_bytes));
    const std::vector<uint8_t> zeros(v_bytes, 0);  // all-zero bits are 0.0 in f32 and bf16
    MOE_RETURN_IF_ERROR(backend_->CopyFromHost(v_rows->data(), zeros.data(), v_bytes));
    std::vector<int32_t> iota(rows);
    std::iota(iota.begin(), iota.end(), 0);
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> index,
                         allocator_->Allocate(rows * sizeof(int32_t)));
    MOE_RETURN_IF_ERROR(backend_->CopyFromHost(index->data(), iota.data(), rows * sizeof(int32_t)));
    v_rows_ = std::move(v_rows);
    iota_ = std::move(index);
  }
  reserved_tokens_ = std::max(reserved_tokens_, tokens);
  return absl::OkStatus();
}

absl::Status MlaAttention::Linear(int64_t t, const void* a, int64_t lda, const PackedWeights& w,
                                  const Buffer* bias, int64_t bias_from, void* c,
                                  const Tensor& f32_scratch) {
  const DType dtype = config_.dtype;
  const int64_t n = w.n();
  GemmArgs g;
  g.m = t;
  g.n = n;
  g.k = w.k();
  g.a = a;
  g.a_dtype = dtype;
  g.lda = lda;
  g.b_dtype = dtype;
  g.packed_b = &w;
  g.c = c;
  g.c_dtype = dtype;
  g.ldc = n;
  g.row_invariant = config_.batch_invariant;
  if (bias == nullptr) return backend_->Gemm(g);
  // GEMM and bias in f32, then one rounding to the run dtype.
  auto* acc = static_cast<float*>(dtype == DType::kF32 ? c : f32_scratch.data());
  g.c = acc;
  g.c_dtype = DType::kF32;
  MOE_RETURN_IF_ERROR(backend_->Gemm(g));
  for (int64_t r = 0; r < t; ++r) {
    AddArgs add;
    add.n = n - bias_from;
    add.dtype = DType::kF32;
    add.a = acc + r * n + bias_from;
    add.b = bias->data();
    add.out = acc + r * n + bias_from;
    MOE_RETURN_IF_ERROR(backend_->Add(add));
  }
  if (dtype == DType::kF32) return absl::OkStatus();
  CastArgs cast;
  cast.n = t * n;
  cast.src = acc;
  cast.src_dtype = DType::kF32;
  cast.dst = c;
  cast.dst_dtype = dtype;
  return backend_->Cast(cast);
}

absl::Status MlaAttention::Forward(const Tensor& x, const GqaAttentionBatch& batch,
                                   const KvCacheView& cache, const Tensor& out) {
  MOE_RETURN_IF_ERROR(CheckAttentionInputs(
      {kPrefix, config_.hidden, cache_heads(), cache_head_dim(), config_.dtype,
       backend_->device()},
      x, batch, cache, out));
  const int64_t t = x.dim(0);
  if (t == 0) return absl::OkStatus();
  if (t > reserved_tokens_) MOE_RETURN_IF_ERROR(ReserveTokens(t));
  workspace_.Reset();
  const DType dtype = config_.dtype;
  const int64_t es = DTypeSize(dtype);
  const int64_t h = config_.heads, qk = config_.qk_head_dim(), v = config_.v_head_dim;
  const int64_t nope = config_.qk_nope_head_dim, rope_dim = config_.qk_rope_head_dim;
  const int64_t kvl = config_.kv_lora_rank, ql = config_.q_lora_rank;
  const bool lora = ql > 0;
  const int64_t kv_cols = h * (nope + v);

  MOE_ASSIGN_OR_RETURN(const Tensor xa, workspace_.Take(dtype, Shape{t, x_cols_}));
  MOE_ASSIGN_OR_RETURN(const Tensor kv, workspace_.Take(dtype, Shape{t, kv_cols}));
  MOE_ASSIGN_OR_RETURN(const Tensor k_rows, workspace_.Take(dtype, Shape{t, h * qk}));
  MOE_ASSIGN_OR_RETURN(const Tensor attn, workspace_.Take(dtype, Shape{t, h * qk}));
  MOE_ASSIGN_OR_RETURN(const Tensor attn_v, workspace_.Take(dtype, Shape{t, h * v}));
  Tensor q_b;
  if (lora) {
    MOE_ASSIGN_OR_RETURN(q_b, workspace_.Take(dtype, Shape{t, h * qk}));
  }
  Tensor scratch;
  if (config_.attention_bias && dtype != DType::kF32) {
    MOE_ASSIGN_OR_RETURN(scratch,
                         workspace_.Take(DType::kF32, Shape{t, std::max(x_cols_, config_.hidden)}));
  }
  auto* xa_data = static_cast<uint8_t*>(xa.data());
  uint8_t* const compressed_kv = xa_data + q_cols_ * es;  // then k_pe at + kvl
  uint8_t* const k_pe = compressed_kv + kvl * es;
  const auto* iota = static_cast<const int32_t*>(iota_->data());

  // [q_a | q ; compressed_kv | k_pe] = x [q_a_proj | q_proj; kv_a_proj_with_mqa]^T (+ biases).
  MOE_RETURN_IF_ERROR(Linear(t, x.data(), config_.hidden, *x_weight_, x_bias_.get(), x_bias_from_,
                             xa_data, scratch));

  const auto* norms = static_cast<const uint8_t*>(norms_->data());
  RmsNormArgs norm;
  norm.rows = t;
  norm.dtype = dtype;
  norm.eps = config_.rms_eps;
  norm.x_ld = norm.out_ld = x_cols_;
  if (lora) {
    norm.cols = ql;
    norm.x = norm.out = xa_data;
    norm.weight = norms;
    MOE_RETURN_IF_ERROR(backend_->RmsNorm(norm));
  }
  norm.cols = kvl;
  norm.x = norm.out = compressed_kv;
  norm.weight = norms + (lora ? ql : 0) * es;
  MOE_RETURN_IF_ERROR(backend_->RmsNorm(norm));

  uint8_t* q = xa_data;
  int64_t q_ld = x_cols_;
  if (lora) {
    MOE_RETURN_IF_ERROR(Linear(t, xa_data, x_cols_, *q_b_weight_, nullptr, 0, q_b.data(), scratch));
    q = static_cast<uint8_t*>(q_b.data());
    q_ld = h * qk;
  }
  MOE_RETURN_IF_ERROR(
      Linear(t, compressed_kv, x_cols_, *kv_b_weight_, nullptr, 0, kv.data(), scratch));

  const auto* rope_table = static_cast<const float*>(rope_->data());
  RopeArgs rope;
  rope.rows = t;
  rope.rotary_dim = rope_dim;
  rope.style = config_.rope_interleave ? RopeStyle::kInterleaved : RopeStyle::kHalf;
  rope.dtype = dtype;
  rope.positions = static_cast<const int32_t*>(batch.positions.data());
  rope.cos = rope_table;
  rope.sin = rope_table + config_.max_positions * (rope_dim / 2);
  rope.max_positions = config_.max_positions;
  rope.heads = h;
  rope.head_dim = qk;  // the head stride: q_pe is the tail of each head
  rope.x = q + nope * es;
  rope.ld = q_ld;
  MOE_RETURN_IF_ERROR(backend_->Rope(rope));
  rope.heads = 1;
  rope.head_dim = rope_dim;
  rope.x = k_pe;
  rope.ld = x_cols_;
  MOE_RETURN_IF_ERROR(backend_->Rope(rope));

  // Cache rows, viewed as [T * H, qk] per head: K = k_nope | k_pe (row t of k_pe for each of
  // t's H heads, index / H), V = v | the zeros v_rows_ already holds.
  const int64_t head_rows = t * h;
  GatherRowsArgs copy;
  copy.rows = head_rows;
  copy.dtype = dtype;
  copy.index = iota;
  copy.index_divisor = 1;
  copy.cols = nope;
  copy.src = kv.data();
  copy.src_ld = nope + v;
  copy.src_rows = head_rows;
  copy.dst = k_rows.data();
  copy.dst_ld = qk;
  MOE_RETURN_IF_ERROR(backend_->GatherRows(copy));
  copy.cols = rope_dim;
  copy.src = k_pe;
  copy.src_ld = x_cols_;
  copy.src_rows = t;
  copy.index_divisor = h;
  copy.dst = static_cast<uint8_t*>(k_rows.data()) + nope * es;
  MOE_RETURN_IF_ERROR(backend_->GatherRows(copy));
  copy.cols = v;
  copy.src = static_cast<const uint8_t*>(kv.data()) + nope * es;
  copy.src_ld = nope + v;
  copy.src_rows = head_rows;
  copy.index_divisor = 1;
  copy.dst = v_rows_->data();
  MOE_RETURN_IF_ERROR(backend_->GatherRows(copy));

  // Every head has its own K / V in the cache (kv_heads = H), V zero-padded to qk.
  CachedAttention att;
  att.heads = h;
  att.kv_heads = h;
  att.head_dim = qk;
  att.dtype = dtype;
  att.q = q;
  att.q_ld = q_ld;
  att.k = k_rows.data();
  att.k_ld = h * qk;
  att.v = v_rows_->data();
  att.v_ld = h * qk;
  att.scale = scale_;
  att.out = attn.data();
  MOE_RETURN_IF_ERROR(WriteKvAndAttend(backend_, att, batch, cache));

  // o_proj reads the first v columns of each head. Compacting them (a copy of T * H * v values)
  // is cheaper than an o_proj re-laid to [D, H * qk] with zero columns, which would spend
  // (qk - v) / v more GEMM work (DeepSeek-V3: half again) on products with zero.
  copy.cols = v;
  copy.src = attn.data();
  copy.src_ld = qk;
  copy.src_rows = head_rows;
  copy.index_divisor = 1;
  copy.dst = attn_v.data();
  copy.dst_ld = v;
  MOE_RETURN_IF_ERROR(backend_->GatherRows(copy));
  return Linear(t, attn_v.data(), h * v, *o_weight_, o_bias_.get(), 0, out.data(), scratch);
}

}  // namespace moe
