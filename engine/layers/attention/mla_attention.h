// DeepSeek-V3's multi-head latent attention (MLA) with a paged KV cache, as Hugging Face
// transformers computes it (DeepseekV3Attention, eager), no grad. With H heads,
// qk = qk_nope_head_dim + qk_rope_head_dim:
//   q     = q_lora_rank > 0 ? q_b_proj(q_a_layernorm(q_a_proj(x))) : q_proj(x)   [T, H, qk]
//           split per head into q_nope [qk_nope_head_dim] | q_pe [qk_rope_head_dim]
//   kv_a  = kv_a_proj_with_mqa(x)                          [T, kv_lora_rank + qk_rope_head_dim]
//           split into compressed_kv | k_pe (k_pe: one head shared by all heads)
//   kv    = kv_b_proj(kv_a_layernorm(compressed_kv))       [T, H, qk_nope_head_dim + v_head_dim]
//           split per head into k_nope | v
//   q_pe, k_pe = RoPE at each token's position (interleaved pairs when rope_interleave, else
//           rotate_half), cos / sin from MakeRopeTable (default or YaRN, whose attention factor
//           is in the table)
//   key   = cat(k_nope, k_pe) per head, query = cat(q_nope, q_pe)
//   out   = o_proj(causal softmax(scale * query . key) v)  over the paged cache
//   scale = qk^-0.5, times mscale^2 with mscale = 0.1 * mscale_all_dim * ln(yarn_factor) + 1
//           (1 when yarn_factor <= 1) for YaRN with mscale_all_dim != 0 (HF yarn_apply_mscale)
// q_a_proj, kv_a_proj_with_mqa and o_proj carry biases when attention_bias; q_proj, q_b_proj
// and kv_b_proj never do (as in HF).
//
// The cache (this layer's design, simple and exact): it holds the decompressed K and V of every
// head, cache_heads() = H heads of cache_head_dim() = qk dims each, so that the GQA Backend::
// KvWrite / Attention ops serve MLA unchanged (with kv_heads = heads). K is cat(k_nope, k_pe)
// per head (k_pe repeated in every head); V is v_head_dim values zero-padded to qk, because the
// Attention op needs V's head dim to equal K's. The padding makes the attention output's last
// qk - v_head_dim columns of each head exactly 0; they are dropped before o_proj. With
// rope_interleave the rotated dims of q_pe and k_pe stay in checkpoint order, while HF
// de-interleaves them: the same permutation of both, so every dot product is HF's.
// This spends H * qk * 2 values per token and layer on the cache (DeepSeek-V3: 49152) where
// the latent form needs kv_lora_rank + qk_rope_head_dim (576): the latent cache with the
// absorbed kv_b_proj (attention over compressed_kv directly) is future work.
#ifndef MOE_ENGINE_LAYERS_ATTENTION_MLA_ATTENTION_H_
#define MOE_ENGINE_LAYERS_ATTENTION_MLA_ATTENTION_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/layers/attention/gqa_attention.h"
#include "kernels/backend.h"
#include "kernels/rope_table.h"

namespace moe {

// Field names follow config.json where there is one (rope fields: rope_parameters / rope_scaling).
struct MlaAttentionConfig {
  int64_t hidden = 0;            // D, hidden_size, > 0
  int64_t heads = 0;             // H, num_attention_heads, > 0
  int64_t q_lora_rank = 0;       // >= 0; 0: q_proj (config value null), else q_a/q_b_proj
  int64_t kv_lora_rank = 0;      // > 0
  int64_t qk_nope_head_dim = 0;  // > 0
  int64_t qk_rope_head_dim = 0;  // even, > 0
  int64_t v_head_dim = 0;        // > 0 and <= qk_nope_head_dim + qk_rope_head_dim (the cache's)
  bool attention_bias = false;   // biases on q_a_proj, kv_a_proj_with_mqa and o_proj
  bool rope_interleave = true;   // RopeStyle::kInterleaved when true, else kHalf

  double rope_theta = 10000.0;  // finite, > 0
  RopeScalingType rope_type = RopeScalingType::kDefault;
  // YaRN only (rope_type == kYarn), as MakeRopeTable reads them. yarn_factor is rope "factor".
  // mscale and mscale_all_dim: 0 means absent (HF tests them for truthiness), so a config
  // without "mscale" must pass 0 here, not 1: HF's rope attention factor differs between the two
  // when mscale_all_dim is set.
  double yarn_factor = 1.0;                      // finite, >= 1
  int64_t original_max_position_embeddings = 0;  // > 0
  double beta_fast = 32.0;                       // finite, > 0
  double beta_slow = 1.0;                        // finite, > 0
  double mscale = 0.0;                           // finite, >= 0
  double mscale_all_dim = 0.0;                   // finite, >= 0

  int64_t max_positions = 0;  // rows of the RoPE table (max_position_embeddings), > 0
  // eps of q_a_layernorm and kv_a_layernorm, finite, >= 0. HF builds both with
  // DeepseekV3RMSNorm's default eps 1e-6, not config.rms_norm_eps: pass 1e-6 for HF parity.
  float rms_eps = 1e-6f;
  DType dtype = DType::kF32;  // run dtype: f32 or bf16

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }

  // The softmax scale HF uses (see the top of this file), in double as Python computes it.
  double softmax_scale() const;

  // InvalidArgument naming the field and value, e.g. "mla_attention: v_head_dim=25 exceeds
  // qk_nope_head_dim + qk_rope_head_dim=24 (the cache's head dim)".
  absl::Status Validate() const;
  // Row-invariant projections (GemmArgs::row_invariant): a token's bits do not depend on
  // the other tokens of the batch (ModelOptions::batch_invariant).
  bool batch_invariant = false;
};

// Weights in Hugging Face / nn.Linear layout ([out, in]) as host (cpu) tensors of f32, bf16 or
// f16; Create() converts and packs them once and keeps no reference to them. A
// default-constructed Tensor means "not given". qk = qk_nope_head_dim + qk_rope_head_dim,
// r = qk_rope_head_dim.
struct MlaAttentionWeights {
  Tensor q_a_proj;            // [q_lora_rank, D], exactly when q_lora_rank > 0
  Tensor q_a_layernorm;       // [q_lora_rank], exactly when q_lora_rank > 0
  Tensor q_b_proj;            // [H * qk, q_lora_rank], exactly when q_lora_rank > 0
  Tensor q_proj;              // [H * qk, D], exactly when q_lora_rank == 0
  Tensor kv_a_proj_with_mqa;  // [kv_lora_rank + r, D]
  Tensor kv_a_layernorm;      // [kv_lora_rank]
  Tensor kv_b_proj;           // [H * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  Tensor o_proj;              // [D, H * v_head_dim]
  Tensor q_a_bias;            // [q_lora_rank], exactly when attention_bias and q_lora_rank > 0
  Tensor kv_a_bias;           // [kv_lora_rank + r], exactly when attention_bias
  Tensor o_bias;              // [D], exactly when attention_bias
};

// Thread-compatible: one thread at a time (like the Backend it uses). The backend and the
// allocator must outlive the layer. Stateless across Forward calls apart from its weights and
// scratch: all sequence state lives in the caller's cache.
// Determinism: every step is a packed GEMM, a row-wise op or a copy, so a token's output bits
// depend neither on the thread count nor on the other tokens of the batch (a prefill equals
// the same tokens decoded one by one, bit for bit, on the CPU backend).
class MlaAttention {
 public:
  // Validates config and weights (InvalidArgument naming the field or tensor and both shapes),
  // fuses q_a_proj (or q_proj) and kv_a_proj_with_mqa into one packed GEMM operand over x,
  // packs q_b_proj, kv_b_proj and o_proj, converts the norms to the run dtype and the biases to
  // f32, and builds the RoPE table on the device.
  static absl::StatusOr<std::unique_ptr<MlaAttention>> Create(const MlaAttentionConfig& config,
                                                              const MlaAttentionWeights& weights,
                                                              Backend* backend,
                                                              Allocator* allocator);
  ~MlaAttention();

  // out[T, D] = attention(x[T, D]) for the batch's tokens, writing their K / V into `cache`
  // first. x and out: config.dtype on the backend's device, out must not overlap x or the
  // cache. cache.k and cache.v: [num_blocks, block_size, cache_heads(), cache_head_dim()] in
  // config.dtype. InvalidArgument naming the tensor and both shapes for a bad shape, dtype or
  // device; data errors (a position, slot or block outside its range) come from the backend
  // ops, positions and slots before the cache is written. T = 0 does nothing. Allocates
  // nothing once reserved for T tokens (see ReserveTokens).
  absl::Status Forward(const Tensor& x, const GqaAttentionBatch& batch, const KvCacheView& cache,
                       const Tensor& out);

  // Grows the scratch for up to `tokens` tokens now, so later Forwards do not allocate.
  // InvalidArgument for tokens < 0; ResourceExhausted from the allocator.
  absl::Status ReserveTokens(int64_t tokens);

  // The cache geometry this layer reads and writes: heads and head dim of cache.k / cache.v.
  int64_t cache_heads() const { return config_.heads; }
  int64_t cache_head_dim() const { return config_.qk_head_dim(); }

  const MlaAttentionConfig& config() const { return config_; }

 private:
  MlaAttention(const MlaAttentionConfig& config, Backend* backend, Allocator* allocator);

  size_t WorkspaceBytes(int64_t tokens) const;
  // c[t, n] = a[t, k] w^T (+ bias on columns [bias_from, n)), fp32 accumulation and bias, one
  // rounding; f32_scratch holds the fp32 result for a bf16 c with a bias.
  absl::Status Linear(int64_t t, const void* a, int64_t lda, const PackedWeights& w,
                      const Buffer* bias, int64_t bias_from, void* c, const Tensor& f32_scratch);

  MlaAttentionConfig config_;
  Backend* backend_;
  Allocator* allocator_;
  Workspace workspace_;
  int64_t reserved_tokens_ = -1;
  int64_t q_cols_ = 0;  // q_lora_rank, or H * qk when q_proj
  int64_t x_cols_ = 0;  // q_cols_ + kv_lora_rank + qk_rope_head_dim
  float scale_ = 1.0f;
  std::unique_ptr<PackedWeights> x_weight_;     // [D, x_cols_]: q_a_proj | q_proj, kv_a_proj
  std::unique_ptr<PackedWeights> q_b_weight_;   // [q_lora_rank, H * qk]; q_lora_rank > 0 only
  std::unique_ptr<PackedWeights> kv_b_weight_;  // [kv_lora_rank, H * (nope + v)]
  std::unique_ptr<PackedWeights> o_weight_;     // [H * v, D]
  std::unique_ptr<Buffer> x_bias_;              // f32 [x_cols_ - bias_from]; attention_bias only
  int64_t x_bias_from_ = 0;                     // first biased column of the x GEMM
  std::unique_ptr<Buffer> o_bias_;              // f32 [D]; attention_bias only
  std::unique_ptr<Buffer> norms_;  // dtype [q_lora_rank + kv_lora_rank]: q_a, kv_a layernorms
  std::unique_ptr<Buffer> rope_;   // f32 [2, max_positions, r / 2]: cos, sin
  // Kept across calls, grown by ReserveTokens: V rows [tokens, H, qk] whose padding columns
  // were zeroed once and are never written, and the row indices 0, 1, ... [tokens * H] that the
  // GatherRows copies read.
  std::unique_ptr<Buffer> v_rows_;
  std::unique_ptr<Buffer> iota_;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_ATTENTION_MLA_ATTENTION_H_
