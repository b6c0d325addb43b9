#include "engine/layers/moe/expert_weights.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/layers/host_weights.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// Host tensor of f32 / bf16 / f16 (checked by CheckHostWeight) as floats, exactly.
std::vector<float> ToFloats(const Tensor& t) {
  std::vector<float> out(t.numel());
  const void* p = t.data();
  switch (t.dtype()) {
    case DType::kF32:
      std::memcpy(out.data(), p, out.size() * sizeof(float));
      break;
    case DType::kBF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToFloat(static_cast<const bf16*>(p)[i]);
      break;
    case DType::kF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = F16ToFloat(static_cast<const f16*>(p)[i]);
      break;
    default:
      break;
  }
  return out;
}

// Storage of `v` in `dtype` (f32 or bf16), rounding to nearest even.
std::vector<uint8_t> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> out(v.size() * DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    auto* dst = reinterpret_cast<bf16*>(out.data());
    for (size_t i = 0; i < v.size(); ++i) dst[i] = FloatToBf16(v[i]);
  }
  return out;
}

// `v` with every value rounded to `dtype` (f32 or bf16) and widened back, exactly.
std::vector<float> RoundedTo(std::vector<float> v, DType dtype) {
  if (dtype == DType::kBF16) {
    for (float& x : v) x = Bf16ToFloat(FloatToBf16(x));
  }
  return v;
}

absl::StatusOr<std::unique_ptr<Buffer>> Upload(Backend* backend, Allocator* allocator,
                                               const std::vector<float>& v, DType dtype) {
  const std::vector<uint8_t> bytes = Encode(v, dtype);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer, allocator->Allocate(bytes.size()));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(buffer->data(), bytes.data(), bytes.size()));
  return buffer;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExpertWeights>> ExpertWeights::Create(const MoeConfig& config,
                                                                     const MoeWeights& weights,
                                                                     ExpertRange experts,
                                                                     Backend* backend,
                                                                     Allocator* allocator) {
  std::unique_ptr<ExpertWeights> w(new ExpertWeights(config, experts, backend, allocator));
  const int64_t d = config.hidden, i = config.inter;
  // The router's weights hold run-dtype values whatever the GEMM's precision, as a model
  // converted to the run dtype holds them; the bias stays an fp32 array for the router op.
  // Packed, like every other GEMM operand of the block: the packed GEMM gives a row the same
  // bits whatever the number of rows (the plain one does not for f32), so a token's routing
  // does not depend on its batch (MOE_SEMANTICS 7.15) or on how tokens are split over ranks.
  {
    MOE_ASSIGN_OR_RETURN(
        std::unique_ptr<Buffer> gate,
        Upload(backend, allocator, RoundedTo(ToFloats(weights.gate), config.dtype),
               w->gate_dtype()));
    MOE_ASSIGN_OR_RETURN(w->gate_packed_, PackDeviceLinear(backend, gate->data(),
                                                           config.num_experts, d,
                                                           w->gate_dtype()));
  }
  if (config.use_expert_bias) {
    MOE_ASSIGN_OR_RETURN(
        w->bias_, Upload(backend, allocator, RoundedTo(ToFloats(weights.expert_bias), config.dtype),
                         DType::kF32));
  }
  {
    // Freed before Create returns: only the packed copies stay.
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> scratch, allocator->Allocate(w->ScratchBytes()));
    for (int64_t x = 0; x < experts.count; ++x) {
      MOE_RETURN_IF_ERROR(w->BuildW13(x, &weights.w1[x], &weights.w3[x], scratch->data()));
      MOE_RETURN_IF_ERROR(w->PackExpert(x, d, 2 * i, scratch->data(), &w->w13_packed_));
      ++w->w13_packs_;
      MOE_RETURN_IF_ERROR(w->BuildW2t(x, weights.w2[x], scratch->data()));
      MOE_RETURN_IF_ERROR(w->PackExpert(x, i, d, scratch->data(), &w->w2t_packed_));
      ++w->w2t_packs_;
    }
  }
  const int64_t s = config.num_shared_experts * config.shared_inter;
  if (s > 0) {
    MOE_ASSIGN_OR_RETURN(w->shared_w13_packed_,
                         PackLinear(backend, allocator, {&weights.shared_w1, &weights.shared_w3},
                                    2 * s, d, config.dtype));
    MOE_ASSIGN_OR_RETURN(w->shared_w2t_packed_,
                         PackLinear(backend, allocator, {&weights.shared_w2}, d, s, config.dtype));
  }
  if (config.shared_gate) {
    MOE_ASSIGN_OR_RETURN(
        w->shared_gate_packed_,
        PackLinear(backend, allocator, {&weights.shared_gate}, 1, d, config.dtype));
  }
  return w;
}

size_t ExpertWeights::packed_bytes() const {
  size_t bytes = 0;
  for (const auto* p : {&gate_packed_, &w13_packed_, &w2t_packed_, &shared_w13_packed_,
                        &shared_w2t_packed_, &shared_gate_packed_}) {
    if (*p != nullptr) bytes += (*p)->bytes();
  }
  return bytes;
}

size_t ExpertWeights::ScratchBytes() const {
  return config_.hidden * 2 * config_.inter * DTypeSize(config_.dtype);
}

absl::Status ExpertWeights::BuildW13(int64_t e, const Tensor* w1, const Tensor* w3, void* scratch) {
  const int64_t d = config_.hidden, i = config_.inter;
  if (w1 != nullptr && w3 != nullptr) {
    MOE_RETURN_IF_ERROR(CopyHostAs(backend_, {w1, w3}, config_.dtype, scratch));
  } else {
    // Keep the rows of the projection that is not replaced: unpacking gives back exactly the
    // bits that were packed.
    MOE_RETURN_IF_ERROR(backend_->UnpackWeights(*w13_packed_, e, scratch, d));
    ++w13_unpacks_;
    if (w1 != nullptr) MOE_RETURN_IF_ERROR(CopyHostAs(backend_, {w1}, config_.dtype, scratch));
    if (w3 != nullptr) {
      void* up_rows = static_cast<uint8_t*>(scratch) + i * d * DTypeSize(config_.dtype);
      MOE_RETURN_IF_ERROR(CopyHostAs(backend_, {w3}, config_.dtype, up_rows));
    }
  }
  ++w13_rebuilds_;
  return absl::OkStatus();
}

absl::Status ExpertWeights::BuildW2t(int64_t e, const Tensor& w2, void* scratch) {
  MOE_RETURN_IF_ERROR(CopyHostAs(backend_, {&w2}, config_.dtype, scratch));
  ++w2t_rebuilds_;
  return absl::OkStatus();
}

absl::Status ExpertWeights::PackExpert(int64_t e, int64_t k, int64_t n, const void* scratch,
                                       std::unique_ptr<PackedWeights>* packed) {
  if (*packed == nullptr) {
    // First expert: make the storage without a source, then fill expert by expert.
    PackWeightsArgs args;
    args.batch = experts_.count;
    args.k = k;
    args.n = n;
    args.dtype = config_.dtype;
    args.ldb = k;
    args.trans_b = true;
    MOE_ASSIGN_OR_RETURN(*packed, backend_->PackWeights(args));
  }
  return backend_->RepackWeights(packed->get(), e, scratch, k);
}

absl::Status ExpertWeights::UpdateExpert(int64_t expert, const Tensor* w1, const Tensor* w3,
                                         const Tensor* w2) {
  const int64_t d = config_.hidden, i = config_.inter;
  if (expert < experts_.first || expert >= experts_.end()) {
    return absl::InvalidArgumentError(
        experts_.count == config_.num_experts
            ? absl::StrCat("moe: expert=", expert, " is outside [0, num_experts=",
                           config_.num_experts, ")")
            : absl::StrCat("moe: expert=", expert, " is outside this block's experts [",
                           experts_.first, ", ", experts_.end(), ")"));
  }
  const int64_t local = expert - experts_.first;
  if (w1 != nullptr) {
    MOE_RETURN_IF_ERROR(CheckHostWeight(absl::StrCat("w1[", expert, "]"), *w1, Shape({i, d})));
  }
  if (w3 != nullptr) {
    MOE_RETURN_IF_ERROR(CheckHostWeight(absl::StrCat("w3[", expert, "]"), *w3, Shape({i, d})));
  }
  if (w2 != nullptr) {
    MOE_RETURN_IF_ERROR(CheckHostWeight(absl::StrCat("w2[", expert, "]"), *w2, Shape({d, i})));
  }
  if (w1 == nullptr && w3 == nullptr && w2 == nullptr) return absl::OkStatus();
  // An update is rare (a trainer's weight sync), so its scratch is allocated here rather than
  // kept for the block's lifetime.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> scratch, allocator_->Allocate(ScratchBytes()));
  // MOE_SEMANTICS 7.12: the packed copies the GEMMs read are refreshed, so nothing is served
  // stale.
  if (w1 != nullptr || w3 != nullptr) {
    MOE_RETURN_IF_ERROR(BuildW13(local, w1, w3, scratch->data()));
    MOE_RETURN_IF_ERROR(backend_->RepackWeights(w13_packed_.get(), local, scratch->data(), d));
    ++w13_packs_;
  }
  if (w2 != nullptr) {
    MOE_RETURN_IF_ERROR(BuildW2t(local, *w2, scratch->data()));
    MOE_RETURN_IF_ERROR(backend_->RepackWeights(w2t_packed_.get(), local, scratch->data(), i));
    ++w2t_packs_;
  }
  return absl::OkStatus();
}

}  // namespace moe
