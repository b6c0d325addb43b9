// The MoE block, no grad:
//   router -> integer counts -> dispatch (stable by expert, token) -> experts (fused w13,
//   transposed w2; one batched GEMM when all counts are equal, else grouped GEMM) ->
//   deterministic in-place combine -> + shared experts.
// See docs/DESIGN.md ("The MoE block") and MOE_SEMANTICS.md for the exact arithmetic.
#ifndef MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_
#define MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/layers/moe/moe_config.h"
#include "kernels/backend.h"

namespace moe {

// Weights as a checkpoint stores them (Hugging Face / nn.Linear layout, [out, in]), as host
// tensors of any float dtype; Create() converts and lays them out once.
struct MoeWeights {
  Tensor gate;             // [E, D]
  Tensor expert_bias;      // [E], only with config.use_expert_bias
  std::vector<Tensor> w1;  // E x [I, D]  gate_proj
  std::vector<Tensor> w3;  // E x [I, D]  up_proj
  std::vector<Tensor> w2;  // E x [D, I]  down_proj
  // Shared experts, S = num_shared_experts * shared_inter.
  Tensor shared_w1;    // [S, D]
  Tensor shared_w3;    // [S, D]
  Tensor shared_w2;    // [D, S]
  Tensor shared_gate;  // [1, D], only with config.shared_gate
};

enum class ExpertPath { kNone, kBatched, kGrouped };
enum class CombinePath { kNone, kInPlace, kCopied };

// What the last Forward did; tests read it to see which path ran.
struct MoeTrace {
  ExpertPath expert_path = ExpertPath::kNone;
  CombinePath combine_path = CombinePath::kNone;
  int64_t tokens = 0;
  std::vector<int64_t> counts;  // rows per expert before any capacity drop
  int64_t dropped_rows = 0;     // capacity mode only
};

// Running totals since Create().
struct MoeCounters {
  int64_t forward_calls = 0;
  int64_t batched_expert_calls = 0;
  int64_t grouped_expert_calls = 0;
  int64_t in_place_combines = 0;
  int64_t copied_combines = 0;
  int64_t w13_rebuilds = 0;  // per expert: fused gate|up copies built (E at Create)
  int64_t w2t_rebuilds = 0;  // per expert: transposed down copies built
};

class MoeBlock {
 public:
  // Validates config and weight shapes (InvalidArgument naming the tensor and both shapes),
  // converts weights to config.dtype and fuses them: w13 [E, D, 2I] (gate | up), w2t [E, I, D].
  static absl::StatusOr<std::unique_ptr<MoeBlock>> Create(const MoeConfig& config,
                                                          const MoeWeights& weights,
                                                          Backend* backend, Allocator* allocator);

  // out[T, D] = MoE(x[T, D]); x and out are device tensors of config.dtype.
  // Returns the tensor holding the result: `out` itself (in-place combine), or, when out
  // overlaps x anywhere, a block-owned buffer valid until the next Forward (x is never written).
  // Allocates nothing once the workspace has grown to this T (see ReserveTokens).
  absl::StatusOr<Tensor> Forward(const Tensor& x, const Tensor& out);

  // Grows the workspace for up to `tokens` tokens now, so later Forwards do not allocate.
  absl::Status ReserveTokens(int64_t tokens);

  // Weight sync (an RL trainer pushing new weights): replaces expert `expert`'s gate_proj,
  // up_proj and/or down_proj (null = unchanged) and rebuilds exactly the fused copies they
  // feed: w1/w3 -> that expert's slice of w13, w2 -> its slice of w2t.
  absl::Status UpdateExpertWeights(int64_t expert, const Tensor* w1, const Tensor* w3,
                                   const Tensor* w2);

  const MoeConfig& config() const { return config_; }
  const MoeTrace& last_trace() const { return trace_; }
  const MoeCounters& counters() const { return counters_; }

 private:
  MoeBlock(const MoeConfig& config, Backend* backend, Allocator* allocator);

  MoeConfig config_;
  Backend* backend_;
  Allocator* allocator_;
  Workspace workspace_;
  MoeTrace trace_;
  MoeCounters counters_;
  // Members for weights and buffers are added by the implementation.
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_
