// Random MoE block weights and inputs for the tools, reproducible from a seed: the same seed
// gives the same bits on any machine and at any thread count (each element is a hash of
// (seed, tensor, index), filled in parallel).
#ifndef MOE_TOOLS_RANDOM_MOE_H_
#define MOE_TOOLS_RANDOM_MOE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/layers/moe/moe_block.h"
#include "engine/layers/moe/moe_config.h"

namespace moe::tools {

// Fills `t` (host-addressable f32 or bf16) with values uniform in [-bound, bound).
// `stream` separates tensors drawn from one seed. InvalidArgument for other dtypes.
absl::Status FillUniform(const Tensor& t, uint64_t seed, uint64_t stream, float bound);

// Checkpoint-layout weights (MoeWeights) in config.dtype, in memory from `allocator` (the
// CPU backend's, i.e. host memory). Scales keep activations O(1): projections uniform in
// +-1/sqrt(fan_in); gate likewise, so routing is spread over the experts; expert bias
// uniform in +-0.05 (it changes selection only).
class RandomMoeWeights {
 public:
  static absl::StatusOr<std::unique_ptr<RandomMoeWeights>> Create(const MoeConfig& config,
                                                                  uint64_t seed,
                                                                  Allocator* allocator);

  const MoeWeights& weights() const { return weights_; }

  // Frees the routed and shared expert matrices (the bulk of the memory) once a MoeBlock has
  // made its own fused copies; weights() then holds only the gate and bias.
  void ReleaseExperts();

  // Bytes currently held.
  int64_t bytes() const;

 private:
  RandomMoeWeights() = default;
  absl::StatusOr<Tensor> NewTensor(DType dtype, Shape shape, bool expert);

  Allocator* allocator_ = nullptr;
  MoeWeights weights_;
  std::vector<std::unique_ptr<Buffer>> small_buffers_;
  std::vector<std::unique_ptr<Buffer>> expert_buffers_;
};

// A [tokens, hidden] activation of `dtype`, uniform in [-1, 1), in memory from `allocator`.
struct RandomActivation {
  std::unique_ptr<Buffer> buffer;
  Tensor tensor;
};
absl::StatusOr<RandomActivation> MakeRandomActivation(int64_t tokens, int64_t hidden, DType dtype,
                                                      uint64_t seed, Allocator* allocator);

// FNV-1a 64 of the bytes of a host tensor: equal checksums mean equal bits.
uint64_t Checksum(const Tensor& t);

// Sum, L2 norm and largest magnitude of a host f32 or bf16 tensor, accumulated in double in
// element order.
struct TensorStats {
  double sum = 0.0;
  double l2 = 0.0;
  double max_abs = 0.0;
  int64_t non_finite = 0;
};
TensorStats ComputeStats(const Tensor& t);

}  // namespace moe::tools

#endif  // MOE_TOOLS_RANDOM_MOE_H_
