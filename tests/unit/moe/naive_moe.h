// A float64 MoE block written from MOE_SEMANTICS.md, independent of the engine: loops over
// tokens and experts, no rounding anywhere except the run-dtype rounding points that
// MoeConfig asks for (they decide routing, so the reference must take them too):
//   - the gate, the expert bias and the shared gate are held as config.dtype values (bf16 runs
//     round them, as the block does whatever the router precision);
//   - router_gemm kRunDType: each logit rounded to config.dtype; the shared gate's logit and
//     sigmoid too;
//   - route_weights kRunDType: each weight and each weighted expert output rounded.
// Inputs are otherwise the values the block sees (already rounded to its storage dtypes), so
// the only other differences are the engine's own roundings.
#ifndef MOE_TESTS_UNIT_MOE_NAIVE_MOE_H_
#define MOE_TESTS_UNIT_MOE_NAIVE_MOE_H_

#include <cstdint>
#include <vector>

#include "engine/layers/moe/moe_config.h"

namespace moe::testing {

struct NaiveMoeWeights {
  std::vector<double> gate;             // [E, D]
  std::vector<double> bias;             // [E], empty unless config.use_expert_bias
  std::vector<std::vector<double>> w1;  // E x [I, D]
  std::vector<std::vector<double>> w3;  // E x [I, D]
  std::vector<std::vector<double>> w2;  // E x [D, I]
  std::vector<double> shared_w1;        // [S, D]
  std::vector<double> shared_w3;        // [S, D]
  std::vector<double> shared_w2;        // [D, S]
  std::vector<double> shared_gate;      // [D], empty unless config.shared_gate
};

struct NaiveRouting {
  std::vector<int32_t> ids;     // [T * K]: ascending expert id per token (slot order if forced)
  std::vector<double> weights;  // [T * K]
  // [T]: the smallest score gap that decided the token's selection (top-k boundary and group
  // boundary) and, in the run-dtype modes of a bf16 config, the smallest distance of a logit or
  // weight from a bf16 rounding boundary (where the engine's fp32 value could round the other
  // way); +inf when nothing was decided by a comparison or a rounding (forced routing, K = E).
  std::vector<double> margin;
};

NaiveRouting NaiveRoute(const MoeConfig& config, const NaiveMoeWeights& w,
                        const std::vector<double>& x, int64_t tokens);

// out[T, D]; honours every field of config, including capacity_factor.
std::vector<double> NaiveMoe(const MoeConfig& config, const NaiveMoeWeights& w,
                             const std::vector<double>& x, int64_t tokens);

// w2 . (silu(w1 . v) * (w3 . v)) for one row v [D]; w1, w3 [I, D], w2 [D, I].
std::vector<double> NaiveFfn(const std::vector<double>& w1, const std::vector<double>& w3,
                             const std::vector<double>& w2, int64_t inter,
                             const std::vector<double>& v);

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_MOE_NAIVE_MOE_H_
