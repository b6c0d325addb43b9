// The steps of MoeBlock::Forward, each a short sequence of backend ops.
#include <algorithm>
#include <cmath>

#include "engine/layers/moe/expert_weights.h"
#include "engine/layers/moe/forward_scratch.h"
#include "engine/layers/moe/moe_block.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

template <typename T>
T* Ptr(const Tensor& t) {
  return static_cast<T*>(t.data());
}

}  // namespace

absl::Status MoeBlock::Widen(const Tensor& src, const Tensor& dst) {
  CastArgs cast;
  cast.n = src.numel();
  cast.src = src.data();
  cast.src_dtype = src.dtype();
  cast.dst = dst.data();
  cast.dst_dtype = DType::kF32;
  return backend_->Cast(cast);
}

absl::Status MoeBlock::Narrow(const Tensor& src, const Tensor& dst) {
  CastArgs cast;
  cast.n = src.numel();
  cast.src = src.data();
  cast.src_dtype = DType::kF32;
  cast.dst = dst.data();
  cast.dst_dtype = dst.dtype();
  return backend_->Cast(cast);
}

absl::Status MoeBlock::Route(const Tensor& x, const ForwardScratch& s) {
  const int64_t t = x.dim(0), d = config_.hidden, e = config_.num_experts;
  GemmArgs gemm;
  gemm.m = t;
  gemm.n = e;
  gemm.k = d;
  gemm.lda = d;
  gemm.packed_b = weights_->gate_packed();
  gemm.ldc = e;
  gemm.row_invariant = true;  // routing must not depend on the batch (MOE_SEMANTICS 7.15)
  if (config_.router_gemm == RouterGemm::kRunDType) {
    // nn.Linear in the run dtype: the logits are rounded to it, then routed in fp32.
    gemm.a = x.data();
    gemm.a_dtype = gemm.b_dtype = gemm.c_dtype = config_.dtype;
    gemm.c = RouterGemmInRunDType(config_) ? s.logits_rd.data() : s.logits.data();
    MOE_RETURN_IF_ERROR(backend_->Gemm(gemm));
    if (RouterGemmInRunDType(config_)) MOE_RETURN_IF_ERROR(Widen(s.logits_rd, s.logits));
  } else {
    // MOE_SEMANTICS 1.1: the gate runs in fp32 on x up-cast to fp32.
    gemm.a = x.data();
    if (config_.dtype != DType::kF32) {
      MOE_RETURN_IF_ERROR(Widen(x, s.x32));
      gemm.a = s.x32.data();
    }
    gemm.c = s.logits.data();
    MOE_RETURN_IF_ERROR(backend_->Gemm(gemm));
  }

  RouterArgs router;
  router.tokens = t;
  router.num_experts = e;
  router.top_k = config_.top_k;
  router.logits = Ptr<const float>(s.logits);
  router.score = config_.score;
  router.expert_bias = weights_->expert_bias();
  router.num_groups = config_.num_groups;
  router.topk_groups = config_.topk_groups;
  router.renormalize = config_.renormalize;
  router.route_scale = config_.route_scale;
  router.force_balanced = config_.force_balanced;
  router.ids = Ptr<int32_t>(s.ids);
  router.weights = Ptr<float>(s.weights);
  MOE_RETURN_IF_ERROR(backend_->Router(router));
  if (RouteWeightsInRunDType(config_)) {
    // The weights as the run dtype holds them (CopyLastRouting reports these).
    MOE_RETURN_IF_ERROR(Narrow(s.weights, s.weights_rd));
    MOE_RETURN_IF_ERROR(Widen(s.weights_rd, s.weights));
  }

  // MOE_SEMANTICS 1.7 / 7.1 / 7.10: exact integer counts of the dispatched slots.
  BincountArgs bincount;
  bincount.n = s.ids.numel();
  bincount.ids = Ptr<const int32_t>(s.ids);
  bincount.num_bins = e;
  bincount.counts = Ptr<int64_t>(s.counts);
  MOE_RETURN_IF_ERROR(backend_->Bincount(bincount));
  if (!counts_on_device_) {
    MOE_RETURN_IF_ERROR(
        backend_->CopyToHost(counts_host_.data(), s.counts.data(), s.counts.nbytes()));
  }

  ExpertOrderArgs order;
  order.n = s.ids.numel();
  order.ids = Ptr<const int32_t>(s.ids);
  order.num_experts = e;
  order.counts = Ptr<const int64_t>(s.counts);
  order.sorted_slots = Ptr<int32_t>(s.sorted_slots);
  order.slot_to_row = Ptr<int32_t>(s.slot_to_row);
  return backend_->ExpertOrder(order);
}

absl::Status MoeBlock::ApplyCapacity(const ForwardScratch& s, int64_t tokens) {
  const int64_t e = config_.num_experts;
  if (counts_on_device_) {
    routed_rows_ = tokens * config_.top_k;  // dropless: every slot is a row
    return absl::OkStatus();
  }
  std::copy(counts_host_.begin(), counts_host_.end(), kept_host_.begin());
  if (config_.capacity_factor > 0.0f) {
    // MOE_SEMANTICS 7.17 (opt-in): expert j keeps the first `capacity` rows of its segment,
    // i.e. its lowest slots (tokens) in dispatch order.
    const double exact = static_cast<double>(tokens) * config_.top_k / e * config_.capacity_factor;
    const int64_t capacity = static_cast<int64_t>(std::ceil(exact));
    int64_t dropped = 0;
    for (int64_t j = 0; j < e; ++j) {
      kept_host_[j] = std::min(counts_host_[j], capacity);
      dropped += counts_host_[j] - kept_host_[j];
    }
    trace_.expert_capacity = capacity;
    trace_.dropped_rows = dropped;
    if (dropped > 0) {
      // Compact the kept rows so the expert GEMMs never see a dropped one; the combine skips
      // slots whose row is -1.
      const int64_t n = s.sorted_slots.numel();
      MOE_RETURN_IF_ERROR(
          backend_->CopyToHost(slots_host_.data(), s.sorted_slots.data(), s.sorted_slots.nbytes()));
      std::fill(slot_to_row_host_.begin(), slot_to_row_host_.begin() + n, -1);
      int64_t old_start = 0, new_row = 0;
      for (int64_t j = 0; j < e; ++j) {
        for (int64_t p = 0; p < kept_host_[j]; ++p, ++new_row) {
          const int32_t slot = slots_host_[old_start + p];
          kept_slots_host_[new_row] = slot;
          slot_to_row_host_[slot] = static_cast<int32_t>(new_row);
        }
        old_start += counts_host_[j];
      }
      MOE_RETURN_IF_ERROR(backend_->CopyFromHost(s.sorted_slots.data(), kept_slots_host_.data(),
                                                 new_row * sizeof(int32_t)));
      MOE_RETURN_IF_ERROR(backend_->CopyFromHost(s.slot_to_row.data(), slot_to_row_host_.data(),
                                                 n * sizeof(int32_t)));
    }
  }
  offsets_host_[0] = 0;
  for (int64_t j = 0; j < e; ++j) offsets_host_[j + 1] = offsets_host_[j] + kept_host_[j];
  routed_rows_ = offsets_host_[e];
  return absl::OkStatus();
}

absl::Status MoeBlock::GatherRows(const Tensor& x, const ForwardScratch& s) {
  const int64_t rows = routed_rows_;
  if (rows == 0) return absl::OkStatus();
  GatherRowsArgs gather;
  gather.rows = rows;
  gather.cols = config_.hidden;
  gather.dtype = config_.dtype;
  gather.src = x.data();
  gather.src_ld = config_.hidden;
  gather.src_rows = x.dim(0);
  gather.index = Ptr<const int32_t>(s.sorted_slots);
  gather.index_divisor = config_.top_k;
  // MOE_SEMANTICS 2.1 / 7.18: Llama4 scales the expert input, round(fp32(x) * w).
  gather.slot_scale = config_.score_before_experts ? Ptr<const float>(s.weights) : nullptr;
  gather.dst = s.rows.data();
  gather.dst_ld = config_.hidden;
  return backend_->GatherRows(gather);
}

absl::Status MoeBlock::ExpertGemms(const Tensor& rows_in, const Tensor& gate_up, const Tensor& act,
                                   absl::Span<const int64_t> counts,
                                   absl::Span<const int64_t> offsets,
                                   const int64_t* device_counts) {
  const int64_t e = experts().count, d = config_.hidden, i = config_.inter;
  const int64_t rows = device_counts != nullptr ? routed_rows_ : offsets[e];
  if (rows == 0) return absl::OkStatus();

  // Expert j's B operands are matrix j of the packed w13 and w2t (batched matrix j, group j).
  GemmArgs up;  // [rows, D] x w13 [D, 2I] -> gate_up [rows, 2I]
  up.n = 2 * i;
  up.k = d;
  up.a = rows_in.data();
  up.a_dtype = up.b_dtype = up.c_dtype = config_.dtype;
  up.lda = d;
  up.packed_b = weights_->w13_packed();
  up.c = gate_up.data();
  up.ldc = 2 * i;
  up.row_invariant = batch_invariant_;
  GemmArgs down;  // act [rows, I] x w2t [I, D] -> rows [rows, D] (the inputs are dead by then)
  down.n = d;
  down.k = i;
  down.a = act.data();
  down.a_dtype = down.b_dtype = down.c_dtype = config_.dtype;
  down.lda = i;
  down.packed_b = weights_->w2t_packed();
  down.c = rows_in.data();
  down.ldc = d;
  down.row_invariant = batch_invariant_;

  SwiGluArgs swiglu;
  swiglu.rows = rows;
  swiglu.inter = i;
  swiglu.dtype = config_.dtype;
  swiglu.gate_up = gate_up.data();
  swiglu.gate_up_ld = 2 * i;
  swiglu.out = act.data();
  swiglu.out_ld = i;

  // MOE_SEMANTICS 3.4 / 7.11: the batched path needs every count equal to one C > 0, checked
  // exactly; anything else takes the grouped path, which skips empty experts.
  const int64_t c = device_counts == nullptr ? counts[0] : 0;
  const bool equal =
      c > 0 && std::all_of(counts.begin(), counts.end(), [c](int64_t k) { return k == c; });
  if (equal && batched_path_enabled_) {
    trace_.expert_path = ExpertPath::kBatched;
    BatchedGemmArgs b1;
    b1.gemm = up;
    b1.gemm.m = c;
    b1.batch = e;
    b1.stride_a = c * d;
    b1.stride_c = c * 2 * i;
    MOE_RETURN_IF_ERROR(backend_->BatchedGemm(b1));
    MOE_RETURN_IF_ERROR(backend_->SwiGlu(swiglu));
    BatchedGemmArgs b2;
    b2.gemm = down;
    b2.gemm.m = c;
    b2.batch = e;
    b2.stride_a = c * i;
    b2.stride_c = c * d;
    return backend_->BatchedGemm(b2);
  }
  trace_.expert_path = ExpertPath::kGrouped;
  GroupedGemmArgs g1;
  g1.gemm = up;
  g1.gemm.m = rows;
  g1.num_groups = e;
  if (device_counts != nullptr) {
    g1.counts = device_counts;
  } else {
    g1.offsets = offsets.data();
  }
  MOE_RETURN_IF_ERROR(backend_->GroupedGemm(g1));
  MOE_RETURN_IF_ERROR(backend_->SwiGlu(swiglu));
  GroupedGemmArgs g2 = g1;
  g2.gemm = down;
  g2.gemm.m = rows;
  return backend_->GroupedGemm(g2);
}

absl::Status MoeBlock::RunShared(const Tensor& x, const ForwardScratch& s, const Tensor& target) {
  const int64_t t = x.dim(0), d = config_.hidden;
  const int64_t sh = config_.num_shared_experts * config_.shared_inter;
  GemmArgs up;
  up.m = t;
  up.n = 2 * sh;
  up.k = d;
  up.a = x.data();
  up.a_dtype = up.b_dtype = up.c_dtype = config_.dtype;
  up.lda = d;
  up.packed_b = weights_->shared_w13_packed();
  up.row_invariant = true;  // the shared output must not depend on the batch either
  up.c = s.shared_gate_up.data();
  up.ldc = 2 * sh;
  MOE_RETURN_IF_ERROR(backend_->Gemm(up));

  SwiGluArgs swiglu;
  swiglu.rows = t;
  swiglu.inter = sh;
  swiglu.dtype = config_.dtype;
  swiglu.gate_up = s.shared_gate_up.data();
  swiglu.gate_up_ld = 2 * sh;
  swiglu.out = s.shared_act.data();
  swiglu.out_ld = sh;
  MOE_RETURN_IF_ERROR(backend_->SwiGlu(swiglu));

  GemmArgs down;  // straight into the output buffer; the combine adds the routed sum to it
  down.m = t;
  down.n = d;
  down.k = sh;
  down.a = s.shared_act.data();
  down.a_dtype = down.b_dtype = down.c_dtype = config_.dtype;
  down.lda = sh;
  down.packed_b = weights_->shared_w2t_packed();
  down.row_invariant = true;
  down.c = target.data();
  down.ldc = d;
  MOE_RETURN_IF_ERROR(backend_->Gemm(down));
  if (!config_.shared_gate) return absl::OkStatus();

  // Qwen2-MoE: shared *= sigmoid(x . w_gate). RouterGemm::kFp32: the logit in fp32, one
  // rounding of the product. kRunDType (bf16): HF's bf16 nn.Linear and F.sigmoid, so the logit
  // and the sigmoid are rounded to the run dtype before the (rounded) product.
  const bool run_dtype = RouterGemmInRunDType(config_);
  GemmArgs logit;
  logit.m = t;
  logit.n = 1;
  logit.k = d;
  logit.a = x.data();
  logit.a_dtype = logit.b_dtype = config_.dtype;
  logit.c_dtype = run_dtype ? config_.dtype : DType::kF32;
  logit.lda = d;
  logit.packed_b = weights_->shared_gate_packed();
  logit.row_invariant = true;
  logit.c = run_dtype ? s.shared_gate_rd.data() : s.shared_gate_logit.data();
  logit.ldc = 1;
  MOE_RETURN_IF_ERROR(backend_->Gemm(logit));
  ScaleRowsArgs scale;
  scale.rows = t;
  scale.cols = d;
  scale.dtype = config_.dtype;
  scale.src = target.data();
  scale.src_ld = d;
  scale.scale = Ptr<const float>(s.shared_gate_logit);
  scale.sigmoid_of_scale = true;
  scale.dst = target.data();
  scale.dst_ld = d;
  if (run_dtype) {
    MOE_RETURN_IF_ERROR(Widen(s.shared_gate_rd, s.shared_gate_logit));
    // sigmoid(logit) in fp32: the router op over one expert (top-1, no renormalisation, scale
    // 1) returns exactly the score; then rounded to the run dtype.
    RouterArgs sigmoid;
    sigmoid.tokens = t;
    sigmoid.num_experts = 1;
    sigmoid.top_k = 1;
    sigmoid.logits = Ptr<const float>(s.shared_gate_logit);
    sigmoid.score = ScoreFunction::kSigmoid;
    sigmoid.ids = Ptr<int32_t>(s.shared_gate_ids);
    sigmoid.weights = Ptr<float>(s.shared_gate_score);
    MOE_RETURN_IF_ERROR(backend_->Router(sigmoid));
    MOE_RETURN_IF_ERROR(Narrow(s.shared_gate_score, s.shared_gate_rd));
    MOE_RETURN_IF_ERROR(Widen(s.shared_gate_rd, s.shared_gate_score));
    scale.scale = Ptr<const float>(s.shared_gate_score);
    scale.sigmoid_of_scale = false;
  }
  return backend_->ScaleRows(scale);
}

absl::Status MoeBlock::ScaleExpertRows(const ForwardScratch& s) {
  const int64_t rows = routed_rows_;
  if (rows == 0) return absl::OkStatus();
  // Each row's weight, in dispatch order (the kept rows only, in capacity mode).
  GatherRowsArgs gather;
  gather.rows = rows;
  gather.cols = 1;
  gather.dtype = DType::kF32;
  gather.src = s.weights.data();
  gather.src_ld = 1;
  gather.src_rows = s.weights.numel();
  gather.index = Ptr<const int32_t>(s.sorted_slots);
  gather.index_divisor = 1;
  gather.dst = s.row_weights.data();
  gather.dst_ld = 1;
  MOE_RETURN_IF_ERROR(backend_->GatherRows(gather));
  ScaleRowsArgs scale;
  scale.rows = rows;
  scale.cols = config_.hidden;
  scale.dtype = config_.dtype;
  scale.src = s.rows.data();
  scale.src_ld = config_.hidden;
  scale.scale = Ptr<const float>(s.row_weights);
  scale.dst = s.rows.data();
  scale.dst_ld = config_.hidden;
  return backend_->ScaleRows(scale);
}

absl::Status MoeBlock::RunCombine(const ForwardScratch& s, const Tensor& target) {
  // MOE_SEMANTICS 4.2 / 7.14: routed = round(fp32 sum in ascending expert id), then
  // out = round(routed + shared), the shared output already sitting in `target`.
  // RouteWeights::kRunDType (bf16): each y * w is rounded first (ScaleExpertRows), and the
  // combine sums the rounded products.
  const bool scaled_rows = config_.score_before_experts || RouteWeightsInRunDType(config_);
  if (!config_.score_before_experts && scaled_rows) MOE_RETURN_IF_ERROR(ScaleExpertRows(s));
  CombineArgs combine;
  combine.tokens = target.dim(0);
  combine.top_k = config_.top_k;
  combine.cols = config_.hidden;
  combine.dtype = config_.dtype;
  combine.expert_out = s.rows.data();
  combine.expert_out_ld = config_.hidden;
  combine.slot_to_row = Ptr<const int32_t>(s.slot_to_row);
  combine.ids = Ptr<const int32_t>(s.ids);
  combine.weights = scaled_rows ? nullptr : Ptr<const float>(s.weights);
  combine.add_to_out = config_.num_shared_experts > 0;
  combine.out = target.data();
  combine.out_ld = config_.hidden;
  return backend_->Combine(combine);
}

}  // namespace moe
