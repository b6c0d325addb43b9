// Configuration of one MoE block: routing, experts, shared experts, dtype.
#ifndef MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_
#define MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe {

// Where the block's gate linears round: the router gate (MOE_SEMANTICS 1.1) and, with
// shared_gate, the shared-expert gate. Only bf16 runs differ; in an f32 run both are the same
// fp32 GEMM on the same values.
enum class RouterGemm {
  // x up-cast to fp32, fp32 GEMM, fp32 logits (torchtitan; Hugging Face DeepSeek-V3:
  // F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))). The shared
  // gate: fp32 logit, out = round(shared * sigmoid(logit)), one rounding.
  kFp32,
  // nn.Linear in the run dtype: x and the gate in the run dtype, fp32 accumulation, logits
  // rounded to the run dtype, then the fp32 router on them (Hugging Face Mixtral, Qwen2-MoE,
  // Qwen3-MoE: router_logits = F.linear(hidden_states, self.weight), softmax in fp32). The
  // shared gate as HF Qwen2-MoE's F.sigmoid(shared_expert_gate(x)) * shared_expert(x) in the
  // run dtype: logit, sigmoid and product each rounded to it.
  kRunDType,
};

// Precision of the routing weights where they scale the expert outputs (score after experts).
// Only bf16 runs differ; in an f32 run kRunDType is kFp32 exactly.
enum class RouteWeights {
  // routed = round(sum_k fp32(y_k) * w_k), w_k fp32 (torchtitan; Hugging Face Mixtral,
  // DeepSeek-V3, whose top-k weights stay fp32).
  kFp32,
  // w_k rounded to the run dtype, each product rounded, then an fp32 sum rounded once:
  // routed = round(sum_k fp32(round(y_k * round(w_k)))) (Hugging Face Qwen2-MoE, Qwen3-MoE:
  // router_top_value.to(router_logits.dtype), then a bf16 product summed in fp32).
  kRunDType,
};

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

  // Router precision (see the enums). Whatever these say, a bf16 run holds the gate, the
  // expert_bias and the shared gate as bf16 values (rounded once at load, as every weight is
  // converted to the run dtype, and as a Hugging Face model cast to bf16 holds them); the
  // defaults are torchtitan's semantics.
  RouterGemm router_gemm = RouterGemm::kFp32;
  RouteWeights route_weights = RouteWeights::kFp32;

  DType dtype = DType::kBF16;  // f32 or bf16: activations and expert weights

  // InvalidArgument naming the field and the numbers (e.g. "moe: top_k=9 exceeds num_experts=8").
  absl::Status Validate() const;
  std::string ToString() const;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_MOE_CONFIG_H_
