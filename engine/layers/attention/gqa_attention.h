// GQA self-attention with a paged KV cache, as Mixtral, Qwen2-MoE and Qwen3-MoE compute it
// (Hugging Face semantics), no grad:
//   qkv = x [q_proj; k_proj; v_proj]^T (+ bias, Qwen2)          one fused GEMM
//   q, k = RMSNorm over head_dim per head (Qwen3 qk_norm)
//   q, k = RoPE, rotate_half style over the whole head_dim
//   k, v -> the caller's paged cache (KvWrite), then causal attention over the cache with
//   scale 1 / sqrt(head_dim) and an optional sliding window
//   out = attn o_proj^T
#ifndef MOE_ENGINE_LAYERS_ATTENTION_GQA_ATTENTION_H_
#define MOE_ENGINE_LAYERS_ATTENTION_GQA_ATTENTION_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/layers/attention/attention_inputs.h"
#include "kernels/backend.h"

namespace moe {

// Field names follow config.json where there is one.
struct GqaAttentionConfig {
  int64_t hidden = 0;           // D, > 0
  int64_t heads = 0;            // H, num_attention_heads, > 0
  int64_t kv_heads = 0;         // KV, num_key_value_heads, > 0, divides heads
  int64_t head_dim = 0;         // hd, even, > 0
  bool qkv_bias = false;        // Qwen2-MoE: q/k/v projections have biases
  bool qk_norm = false;         // Qwen3-MoE: RMSNorm of q and k per head before RoPE
  double rope_theta = 10000.0;  // > 0
  int64_t max_positions = 0;    // rows of the RoPE table (max_position_embeddings), > 0
  int64_t sliding_window = 0;   // 0: none; else the positions each query sees, itself included
  float rms_eps = 1e-6f;        // rms_norm_eps of the qk norms, finite, >= 0
  DType dtype = DType::kF32;    // run dtype: f32 or bf16

  // InvalidArgument naming the field and value, e.g. "attention: heads=6 is not a multiple
  // of kv_heads=4".
  absl::Status Validate() const;
  // Row-invariant projections (GemmArgs::row_invariant): a token's bits do not depend on
  // the other tokens of the batch (ModelOptions::batch_invariant).
  bool batch_invariant = false;
};

// Weights in Hugging Face / nn.Linear layout ([out, in]) as host (cpu) tensors of f32, bf16 or
// f16; Create() converts and packs them once and keeps no reference to them. A
// default-constructed Tensor means "not given".
struct GqaAttentionWeights {
  Tensor q_proj;  // [H * hd, D]
  Tensor k_proj;  // [KV * hd, D]
  Tensor v_proj;  // [KV * hd, D]
  Tensor o_proj;  // [D, H * hd]
  Tensor q_bias;  // [H * hd], exactly when qkv_bias
  Tensor k_bias;  // [KV * hd], exactly when qkv_bias
  Tensor v_bias;  // [KV * hd], exactly when qkv_bias
  Tensor q_norm;  // [hd], exactly when qk_norm
  Tensor k_norm;  // [hd], exactly when qk_norm
};

// Thread-compatible: one thread at a time (like the Backend it uses). The backend and the
// allocator must outlive the layer. Stateless across Forward calls apart from its weights and
// workspace: all sequence state lives in the caller's cache.
class GqaAttention {
 public:
  // Validates config and weights (InvalidArgument naming the field or tensor and both shapes),
  // fuses q/k/v into one packed [D, (H + 2 KV) hd] GEMM operand, packs o_proj, converts
  // biases and norms to the run dtype (biases to f32) and builds the RoPE table on the device.
  static absl::StatusOr<std::unique_ptr<GqaAttention>> Create(const GqaAttentionConfig& config,
                                                              const GqaAttentionWeights& weights,
                                                              Backend* backend,
                                                              Allocator* allocator);
  ~GqaAttention();

  // out[T, D] = attention(x[T, D]) for the batch's tokens, writing their K / V into `cache`
  // first. x and out: config.dtype on the backend's device, out must not overlap x.
  // InvalidArgument naming the tensor for a bad shape, dtype or device; data errors (a
  // position, slot or block outside its range) come from the backend ops, before the cache is
  // written for slots and positions. T = 0 does nothing. Allocates nothing once the workspace
  // has grown to T tokens (see ReserveTokens).
  absl::Status Forward(const Tensor& x, const GqaAttentionBatch& batch, const KvCacheView& cache,
                       const Tensor& out);

  // Grows the workspace for up to `tokens` tokens now, so later Forwards do not allocate.
  absl::Status ReserveTokens(int64_t tokens);

  // The cache geometry this layer reads and writes: heads and head dim of cache.k / cache.v.
  int64_t cache_heads() const { return config_.kv_heads; }
  int64_t cache_head_dim() const { return config_.head_dim; }

  const GqaAttentionConfig& config() const { return config_; }

 private:
  GqaAttention(const GqaAttentionConfig& config, Backend* backend, Allocator* allocator);

  size_t WorkspaceBytes(int64_t tokens) const;

  GqaAttentionConfig config_;
  Backend* backend_;
  Allocator* allocator_;
  Workspace workspace_;
  int64_t reserved_tokens_ = -1;
  int64_t qkv_cols_ = 0;                       // (H + 2 KV) hd
  std::unique_ptr<PackedWeights> qkv_weight_;  // [D, qkv_cols_]
  std::unique_ptr<PackedWeights> o_weight_;    // [H hd, D]
  std::unique_ptr<Buffer> qkv_bias_;           // f32 [qkv_cols_], qkv_bias only
  std::unique_ptr<Buffer> norms_;              // dtype [2, hd]: q_norm, k_norm; qk_norm only
  std::unique_ptr<Buffer> rope_;               // f32 [2, max_positions, hd / 2]: cos, sin
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_ATTENTION_GQA_ATTENTION_H_
