// The MoE block's weights in device memory, in the layouts the kernels consume, built once at
// load and rebuilt per expert on an explicit update:
//   gate      f32 | dtype [E, D] router: dtype for RouterGemm::kRunDType, else f32; its
//                                values rounded to dtype either way (a bf16 run routes with
//                                the bf16 gate, as a model converted to bf16 does)
//   bias      f32   [E]          selection-only expert bias (values rounded to dtype), or absent
//   w13       dtype [E, D, 2I]   per expert the GEMM B operand [K=D, N=2I]: gate cols, then up
//   w2t       dtype [E, I, D]    per expert W2^T, the B operand [K=I, N=D]
//   shared_w13 [D, 2S], shared_w2t [S, D], shared_gate dtype [1, D] (each optional)
// w13, w2t, the shared pair and both gates exist only as PackedWeights (Backend::PackWeights,
// memory held by the backend), the layout the GEMMs read, so the experts are stored once; the
// gates are packed too because the packed GEMM gives a row the same bits for any row count. They are
// packed from the checkpoint's own [out, in] matrices as trans_b sources (w13's source is
// [w1; w3], [2I, D]; w2t's is w2 itself, [D, I]), so nothing is transposed on the host: an
// expert's matrices go to a one-expert device scratch buffer with one copy each (converted
// only if the checkpoint's dtype is not the run dtype) and are packed from there, so loading
// never holds a plain copy of all experts either. An update that replaces only one of w1 / w3
// reads the expert's [w1; w3] back (Backend::UnpackWeights, exact) to keep the other's rows.
#ifndef MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_
#define MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_

#include <cstddef>
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
  // `config` must be valid and `weights` checked (CheckMoeWeights with `experts`); the packed
  // handles hold experts.count matrices, matrix j being expert experts.first + j. Converts (round to nearest
  // even), fuses and packs on the device through `backend`; the router weights and the
  // scratch come from `allocator`, which must outlive this object (updates use it too).
  static absl::StatusOr<std::unique_ptr<ExpertWeights>> Create(const MoeConfig& config,
                                                               const MoeWeights& weights,
                                                               ExpertRange experts,
                                                               Backend* backend,
                                                               Allocator* allocator);

  // Replaces expert `expert`'s (a global id inside experts()) gate_proj / up_proj / down_proj (null = unchanged) and rebuilds
  // and repacks only the expert's matrices they feed, through a scratch buffer of one expert's
  // w13 allocated for the call. InvalidArgument naming the tensor or the expert index;
  // ResourceExhausted if the scratch cannot be had; nothing is changed when validation or the
  // scratch allocation fails.
  absl::Status UpdateExpert(int64_t expert, const Tensor* w1, const Tensor* w3, const Tensor* w2);

  ExpertRange experts() const { return experts_; }
  // [E, D] and [1, D] as trans_b sources: B = W^T [D, E] and [D, 1].
  const PackedWeights* gate_packed() const { return gate_packed_.get(); }
  DType gate_dtype() const {
    return config_.router_gemm == RouterGemm::kRunDType ? config_.dtype : DType::kF32;
  }
  const float* expert_bias() const {
    return bias_ ? static_cast<const float*>(bias_->data()) : nullptr;
  }
  const PackedWeights* shared_gate_packed() const { return shared_gate_packed_.get(); }
  // experts().count matrices [D, 2I] and [I, D] (null when it is 0); the shared ones hold one matrix, or are null without
  // shared experts.
  const PackedWeights* w13_packed() const { return w13_packed_.get(); }
  const PackedWeights* w2t_packed() const { return w2t_packed_.get(); }
  const PackedWeights* shared_w13_packed() const { return shared_w13_packed_.get(); }
  const PackedWeights* shared_w2t_packed() const { return shared_w2t_packed_.get(); }

  // Bytes of the packed handles (backend memory, outside the allocator).
  size_t packed_bytes() const;

  // Per expert: fused matrices built so far (E each at Create), matrices packed so far
  // (likewise), and w13 matrices read back for a partial update (0 at Create).
  int64_t w13_rebuilds() const { return w13_rebuilds_; }
  int64_t w2t_rebuilds() const { return w2t_rebuilds_; }
  int64_t w13_packs() const { return w13_packs_; }
  int64_t w2t_packs() const { return w2t_packs_; }
  int64_t w13_unpacks() const { return w13_unpacks_; }

 private:
  ExpertWeights(const MoeConfig& config, ExpertRange experts, Backend* backend,
                Allocator* allocator)
      : config_(config), experts_(experts), backend_(backend), allocator_(allocator) {}

  // Device scratch for one expert's [w1; w3] [2I, D] (w2 [D, I] fits in it too).
  size_t ScratchBytes() const;
  // e below is an index into the packed handles (expert experts_.first + e).
  // Writes expert e's [w1; w3] into `scratch` from w1 and/or w3; a missing one keeps its
  // current rows, read back from the packed copy.
  absl::Status BuildW13(int64_t e, const Tensor* w1, const Tensor* w3, void* scratch);
  // Writes expert e's w2 [D, I] (the trans_b source of w2t) into `scratch`.
  absl::Status BuildW2t(int64_t e, const Tensor& w2, void* scratch);
  // Packs the [n, k] matrix at `scratch` (B^T, trans_b) as expert e's matrix of *packed. The
  // first call makes the handle of experts_.count matrices (all zeros until packed).
  absl::Status PackExpert(int64_t e, int64_t k, int64_t n, const void* scratch,
                          std::unique_ptr<PackedWeights>* packed);

  MoeConfig config_;
  ExpertRange experts_;
  Backend* backend_;
  Allocator* allocator_;
  std::unique_ptr<Buffer> bias_;
  std::unique_ptr<PackedWeights> gate_packed_, w13_packed_, w2t_packed_, shared_w13_packed_,
      shared_w2t_packed_, shared_gate_packed_;
  int64_t w13_rebuilds_ = 0;
  int64_t w2t_rebuilds_ = 0;
  int64_t w13_packs_ = 0;
  int64_t w2t_packs_ = 0;
  int64_t w13_unpacks_ = 0;
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_EXPERT_WEIGHTS_H_
