// The tensors a checkpoint of each supported family must hold, under their Hugging Face names,
// and the check of a checkpoint against them.
//
// Names (i: a layer, e: an expert; "L" = "model.layers.{i}."):
//   model.embed_tokens.weight [vocab, hidden]; model.norm.weight [hidden];
//   lm_head.weight [vocab, hidden] unless tie_word_embeddings.
//   L input_layernorm.weight, L post_attention_layernorm.weight [hidden].
//   Attention, GQA (Mixtral, Qwen3-MoE, Qwen2-MoE): L self_attn.{q,k,v,o}_proj.weight;
//     q/k/v biases when attention_bias (Qwen2-MoE's qkv_bias; Qwen3-MoE also o_proj.bias);
//     Qwen3-MoE: L self_attn.{q,k}_norm.weight [head_dim].
//   Attention, MLA (DeepSeek-V3): L self_attn.q_a_proj, q_a_layernorm, q_b_proj (or q_proj when
//     q_lora_rank is null), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj; with
//     attention_bias also q_a_proj.bias, kv_a_proj_with_mqa.bias and o_proj.bias.
//   MoE layers: Mixtral L block_sparse_moe.gate.weight [E, hidden] and
//     L block_sparse_moe.experts.{e}.w1 / w3 [I, hidden], w2 [hidden, I];
//     the others L mlp.gate.weight [E, hidden] and L mlp.experts.{e}.gate_proj / up_proj
//     [I, hidden], down_proj [hidden, I]; Qwen2-MoE L mlp.shared_expert.{gate,up,down}_proj and
//     L mlp.shared_expert_gate.weight [1, hidden]; DeepSeek-V3 L mlp.gate.e_score_correction_bias
//     [E] and L mlp.shared_experts.{gate,up,down}_proj (width n_shared_experts * I).
//   Dense layers: L mlp.{gate,up}_proj.weight [intermediate_size, hidden], down_proj transposed.
// Weights are [out_features, in_features], as torch.nn.Linear stores them.
//
// Thread-safety: free functions over immutable inputs.
#ifndef MOE_ENGINE_MODEL_CHECKPOINT_LAYOUT_H_
#define MOE_ENGINE_MODEL_CHECKPOINT_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/core/shape.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors_index.h"

namespace moe {

// What a tensor is for; the loader dispatches on it.
enum class TensorRole {
  kEmbedding,
  kNorm,              // RMSNorm weights: layer norms, q/k norms, MLA's q_a / kv_a norms, final norm
  kAttention,         // projection weights of attention
  kAttentionBias,     // their biases
  kRouter,            // the MoE gate [E, hidden]
  kRouterBias,        // DeepSeek-V3 e_score_correction_bias [E]
  kExpert,            // a routed expert's projection
  kSharedExpert,      // a shared expert's projection
  kSharedExpertGate,  // Qwen2-MoE's sigmoid gate of the shared expert [1, hidden]
  kDenseMlp,          // the SwiGLU MLP of a dense layer
  kLmHead,
};

// "embedding", "norm", "attention", ... (the enumerator's name in snake_case).
absl::string_view TensorRoleName(TensorRole role);

struct ExpectedTensor {
  std::string name;
  Shape shape;
  TensorRole role;
  int64_t layer = -1;   // -1 for embedding, final norm and lm_head
  int64_t expert = -1;  // the routed expert, else -1
};

// Every tensor the engine reads from a checkpoint of `config`, in a fixed order: embedding,
// then each layer (norms, attention, MLP), then final norm and lm_head. `config` is one that
// ParseModelConfig accepted.
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config);

// Tensors a checkpoint may hold that the engine does not need: "*.rotary_emb.inv_freq" and, for
// DeepSeek-V3, the multi-token-prediction layers "model.layers.{i}.*" with i >= num_hidden_layers.
bool IsIgnorableTensor(const ModelConfig& config, absl::string_view name);

// Checks `checkpoint` against ExpectedTensors(config): every expected tensor present with its
// shape and a weight dtype (F32, BF16 or F16), and no tensor that is neither expected nor
// ignorable. OK, or InvalidArgument reporting every problem found: the message starts with
// the checkpoint (its file, or its shards' folder) and the count, then lists the first
// kCheckpointProblemsShown problems, each naming the file and the tensor:
//   missing tensor "lm_head.weight" (expected shape [256, 64])
//   <file>: tensor "model.norm.weight" has shape [65], expected [64]
//   <file>: tensor "model.norm.weight" has dtype I32, expected F32, BF16 or F16
//   <file>: unknown tensor "model.foo.weight"
absl::Status CheckCheckpoint(const ModelConfig& config, const SafetensorsCheckpoint& checkpoint);

// The same, requiring only the tensors of `needed` (a subset of ExpectedTensors(config), e.g.
// an expert-parallel rank's from ExpectedTensorsWithExperts): a tensor of ExpectedTensors that
// is not needed may be missing, and is not looked at when present (only its name is known).
absl::Status CheckCheckpoint(const ModelConfig& config, const SafetensorsCheckpoint& checkpoint,
                             const std::vector<ExpectedTensor>& needed);

// The tensors of `all` that are not routed experts' (expert = -1) or belong to a routed expert
// in [first, first + count), in the order of `all`: what an expert-parallel rank reads.
std::vector<ExpectedTensor> ExpectedTensorsWithExperts(const std::vector<ExpectedTensor>& all,
                                                       int64_t first, int64_t count);

inline constexpr int kCheckpointProblemsShown = 8;

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_CHECKPOINT_LAYOUT_H_
