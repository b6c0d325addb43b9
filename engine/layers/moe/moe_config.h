// Configuration of one MoE block: routing, experts, shared experts, dtype.
#ifndef MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_
#define MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe {

struct MoeConfig {
  int64_t num_experts = 0;  // E
  int64_t top_k = 0;        // K
  int64_t hidden = 0;       // D
  int64_t inter = 0;        // I, each routed expert's intermediate size

  ScoreFunction score = ScoreFunction::kSoftmax;
  bool use_expert_bias = false;  // selection-only bias (DeepSeek-V3 e_score_correction_bias)
  int64_t num_groups = 1;        // group-limited routing when > 1
  int64_t topk_groups = 1;
  bool renormalize = false;  // divide the top-k weights by their sum
  float route_scale = 1.0f;
  // false: out = sum_k w_k * FFN_k(x) (DeepSeek-V3, Qwen, Mixtral);
  // true:  out = sum_k FFN_k(w_k * x) (Llama4).
  bool score_before_experts = false;

  // Shared experts: one dense SwiGLU FFN of num_shared_experts * shared_inter on every token.
  int64_t num_shared_experts = 0;
  int64_t shared_inter = 0;
  bool shared_gate = false;  // Qwen2-MoE: shared output *= sigmoid(x . w_gate)

  // Debug / benchmark routing: token t goes to experts (t*K + k) mod E (torchtitan's
  // force_load_balance); weights are the router's scores at those ids.
  bool force_balanced = false;
  // 0 = dropless (the default and torchtitan's semantics). > 0: each expert takes at most
  // ceil(T*K/E * capacity_factor) rows, lowest token ids first; the rest are dropped (their
  // contribution is zero) and counted in the trace.
  float capacity_factor = 0.0f;

  DType dtype = DType::kBF16;  // f32 or bf16: activations and expert weights

  // InvalidArgument naming the field and the numbers (e.g. "moe: top_k=9 exceeds num_experts=8").
  absl::Status Validate() const;
  std::string ToString() const;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_
