// The MoE block's weights in device memory, in the layouts the kernels consume, built once at
// load and rebuilt per expert slice on an explicit update:
//   gate      f32   [E, D]       router (kept fp32: routing is computed in fp32)
//   bias      f32   [E]          selection-only expert bias, or absent
//   w13       dtype [E, D, 2I]   per expert the GEMM B operand [K=D, N=2I]: gate cols, then up
//   w2t       dtype [E, I, D]    per expert W2^T, the B operand [K=I, N=D]
//   shared_w13 [D, 2S], shared_w2t [S, D] (packed only), shared_gate dtype [1, D] (each optional)
// The expert GEMMs read w13, w2t and the shared pair as PackedWeights (Backend::PackWeights),
// packed once at load so that small-batch GEMMs do not re-pack them on every call; an update
// repacks exactly the experts it rebuilds. The plain w13 / w2t stay on the device because a
// packed copy cannot be read back: they are the source of an update that replaces only one of
// w1 / w3 (this doubles the routed experts' memory). The shared experts, never updated, keep
// only their packed copy.
#ifndef MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_
#define MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/layers/moe/moe_config.h"
#include "engine/layers/moe/moe_weights.h"
#include "kernels/backend.h"

namespace moe {

class ExpertWeights {
 public:
  // `config` must be valid and `weights` checked (CheckMoeWeights). Converts (round to nearest
  // even), fuses and copies to the device through `backend`; memory comes from `allocator`.
  static absl::StatusOr<std::unique_ptr<ExpertWeights>> Create(const MoeConfig& config,
                                                               const MoeWeights& weights,
                                                               Backend* backend,
                                                               Allocator* allocator);

  // Replaces expert `expert`'s gate_proj / up_proj / down_proj (null = unchanged) and rebuilds
  // only the slices they feed. InvalidArgument naming the tensor or the expert index; nothing is
  // changed when it fails.
  absl::Status UpdateExpert(int64_t expert, const Tensor* w1, const Tensor* w3, const Tensor* w2);

  const float* gate() const { return static_cast<const float*>(gate_->data()); }
  const float* expert_bias() const {
    return bias_ ? static_cast<const float*>(bias_->data()) : nullptr;
  }
  const void* w13() const { return w13_->data(); }
  const void* w2t() const { return w2t_->data(); }
  const void* shared_gate() const { return shared_gate_ ? shared_gate_->data() : nullptr; }
  // E matrices [D, 2I] and [I, D]; the shared ones hold one matrix, or are null without
  // shared experts.
  const PackedWeights* w13_packed() const { return w13_packed_.get(); }
  const PackedWeights* w2t_packed() const { return w2t_packed_.get(); }
  const PackedWeights* shared_w13_packed() const { return shared_w13_packed_.get(); }
  const PackedWeights* shared_w2t_packed() const { return shared_w2t_packed_.get(); }

  // Expert slices built so far (E each at Create), and expert matrices packed so far (likewise).
  int64_t w13_rebuilds() const { return w13_rebuilds_; }
  int64_t w2t_rebuilds() const { return w2t_rebuilds_; }
  int64_t w13_packs() const { return w13_packs_; }
  int64_t w2t_packs() const { return w2t_packs_; }

 private:
  ExpertWeights(const MoeConfig& config, Backend* backend) : config_(config), backend_(backend) {}

  // Writes expert e's slice of w13 from w1 and/or w3; a missing one keeps its current columns.
  absl::Status BuildW13(int64_t e, const Tensor* w1, const Tensor* w3);
  absl::Status BuildW2t(int64_t e, const Tensor& w2);
  void* W13Slice(int64_t e) const;
  void* W2tSlice(int64_t e) const;

  MoeConfig config_;
  Backend* backend_;
  std::unique_ptr<Buffer> gate_, bias_, w13_, w2t_, shared_gate_;
  std::unique_ptr<PackedWeights> w13_packed_, w2t_packed_, shared_w13_packed_, shared_w2t_packed_;
  int64_t w13_rebuilds_ = 0;
  int64_t w2t_rebuilds_ = 0;
  int64_t w13_packs_ = 0;
  int64_t w2t_packs_ = 0;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_
