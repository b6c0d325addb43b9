// Dense SwiGLU MLP as Hugging Face computes it (LlamaMLP / Qwen3MLP / DeepseekV3MLP), no grad:
//   out = down_proj(silu(gate_proj(x)) * up_proj(x))
// gate and up run as one fused GEMM into [T, 2I] (gate | up per row); SwiGlu rounds
// silu(gate) and the product to the run dtype as PyTorch does; down is a second GEMM.
// Used by DeepSeek-V3's first_k_dense_replace layers and Qwen3-MoE's mlp_only_layers.
#ifndef MOE_ENGINE_LAYERS_MLP_DENSE_MLP_H_
#define MOE_ENGINE_LAYERS_MLP_DENSE_MLP_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "kernels/backend.h"

namespace moe {

struct DenseMlpConfig {
  int64_t hidden = 0;         // D, hidden_size, > 0
  int64_t inter = 0;          // I, intermediate_size, > 0
  DType dtype = DType::kF32;  // run dtype: f32 or bf16

  // InvalidArgument naming the field and value, e.g. "dense_mlp: inter=0 must be > 0".
  absl::Status Validate() const;
  // Row-invariant projections (GemmArgs::row_invariant): a token's bits do not depend on
  // the other tokens of the batch (ModelOptions::batch_invariant).
  bool batch_invariant = false;
};

// Weights in Hugging Face / nn.Linear layout ([out, in]) as host (cpu) tensors of f32, bf16 or
// f16; Create() converts and packs them once and keeps no reference to them.
struct DenseMlpWeights {
  Tensor gate_proj;  // [I, D]
  Tensor up_proj;    // [I, D]
  Tensor down_proj;  // [D, I]
};

// Thread-compatible: one thread at a time (like the Backend it uses). The backend and the
// allocator must outlive the layer. Holds no state across Forward calls but its weights and
// workspace.
class DenseMlp {
 public:
  // Validates config and weights (InvalidArgument naming the field or tensor and both shapes,
  // e.g. "dense_mlp: up_proj has shape [8, 5], expected [7, 5]"), fuses gate_proj | up_proj into
  // one packed [D, 2I] GEMM operand and packs down_proj as [I, D], in config.dtype.
  static absl::StatusOr<std::unique_ptr<DenseMlp>> Create(const DenseMlpConfig& config,
                                                          const DenseMlpWeights& weights,
                                                          Backend* backend, Allocator* allocator);
  ~DenseMlp();

  // out[T, D] = MLP(x[T, D]). x and out: config.dtype on the backend's device, row-major and
  // contiguous. out MAY alias or overlap x (in place is fine): x is read in full by the first
  // GEMM into the workspace before out is written. InvalidArgument naming the tensor for a bad
  // shape, dtype or device. T = 0 does nothing. Allocates nothing once the workspace has grown
  // to T tokens (see ReserveTokens). Results do not depend on the backend's thread count.
  absl::Status Forward(const Tensor& x, const Tensor& out);

  // Grows the workspace for up to `tokens` tokens now, so later Forwards do not allocate.
  // InvalidArgument for tokens < 0.
  absl::Status ReserveTokens(int64_t tokens);

  const DenseMlpConfig& config() const { return config_; }

 private:
  DenseMlp(const DenseMlpConfig& config, Backend* backend, Allocator* allocator);

  absl::Status CheckInputs(const Tensor& x, const Tensor& out) const;
  size_t WorkspaceBytes(int64_t tokens) const;

  DenseMlpConfig config_;
  Backend* backend_;
  Workspace workspace_;
  int64_t reserved_tokens_ = -1;
  std::unique_ptr<PackedWeights> gate_up_weight_;  // [D, 2I]: gate columns, then up columns
  std::unique_ptr<PackedWeights> down_weight_;     // [I, D]
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MLP_DENSE_MLP_H_
