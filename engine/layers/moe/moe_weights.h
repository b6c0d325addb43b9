// The MoE block's weights as a checkpoint stores them, and their validation against a config.
#ifndef MOE_ENGINE_LAYERS_MOE_MOE_WEIGHTS_H_
#define MOE_ENGINE_LAYERS_MOE_MOE_WEIGHTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/core/shape.h"
#include "engine/core/tensor.h"
#include "engine/layers/moe/moe_config.h"

namespace moe {

// Weights in Hugging Face / nn.Linear layout ([out, in]), as host (cpu) tensors of f32, bf16
// or f16; MoeBlock::Create() converts and lays them out once. The block keeps no reference to
// them after Create returns. A default-constructed Tensor means "not given".
struct MoeWeights {
  Tensor gate;             // [E, D]
  Tensor expert_bias;      // [E], exactly when config.use_expert_bias
  std::vector<Tensor> w1;  // E x [I, D]  gate_proj
  std::vector<Tensor> w3;  // E x [I, D]  up_proj
  std::vector<Tensor> w2;  // E x [D, I]  down_proj
  // Shared experts, S = num_shared_experts * shared_inter; given exactly when S > 0.
  Tensor shared_w1;    // [S, D]
  Tensor shared_w3;    // [S, D]
  Tensor shared_w2;    // [D, S]
  Tensor shared_gate;  // [1, D], exactly when config.shared_gate
};

// The routed experts a block holds: [first, first + count) of config.num_experts. A
// single-device block holds all of them; an expert-parallel rank only its own range
// (engine/dist/expert_placement.h).
struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
  int64_t end() const { return first + count; }
};

// True if `t` is anything but a default-constructed Tensor.
bool IsGiven(const Tensor& t);

// OK if `t` is a host tensor of a float dtype (f32, bf16, f16) with shape `want` and data;
// else InvalidArgument naming `name`, e.g. "moe: w2[3] has shape [64, 33], expected [64, 32]".
absl::Status CheckHostWeight(absl::string_view name, const Tensor& t, const Shape& want);

// Every tensor of `weights` against `config` (which must be valid): presence, shape, dtype,
// device. InvalidArgument naming the first bad tensor.
absl::Status CheckMoeWeights(const MoeConfig& config, const MoeWeights& weights);

// The same for a block holding only `experts`: w1, w3 and w2 have experts.count entries, entry
// j being expert experts.first + j (named so in messages). InvalidArgument also for a range
// outside [0, num_experts].
absl::Status CheckMoeWeights(const MoeConfig& config, const MoeWeights& weights,
                             ExpertRange experts);

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_MOE_WEIGHTS_H_
