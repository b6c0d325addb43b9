#include "engine/layers/moe/moe_block.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/layers/moe/expert_weights.h"
#include "engine/layers/moe/forward_scratch.h"
#include "kernels/status_macros.h"

namespace moe {

MoeBlock::MoeBlock(const MoeConfig& config, Backend* backend, Allocator* allocator)
    : config_(config),
      backend_(backend),
      allocator_(allocator),
      workspace_(allocator),
      scratch_(std::make_unique<ForwardScratch>()) {
  trace_.counts.assign(config.num_experts, 0);
  counts_host_.assign(config.num_experts, 0);
  kept_host_.assign(config.num_experts, 0);
  offsets_host_.assign(config.num_experts + 1, 0);
}

MoeBlock::~MoeBlock() = default;

absl::StatusOr<std::unique_ptr<MoeBlock>> MoeBlock::Create(const MoeConfig& config,
                                                           const MoeWeights& weights,
                                                           Backend* backend, Allocator* allocator) {
  return Create(config, weights, ExpertRange{0, config.num_experts}, backend, allocator);
}

absl::StatusOr<std::unique_ptr<MoeBlock>> MoeBlock::Create(const MoeConfig& config,
                                                           const MoeWeights& weights,
                                                           ExpertRange experts, Backend* backend,
                                                           Allocator* allocator) {
  if (backend == nullptr || allocator == nullptr) {
    return absl::InvalidArgumentError("moe: backend and allocator must not be null");
  }
  if (allocator->backend() != backend) {
    return absl::InvalidArgumentError("moe: allocator belongs to another backend");
  }
  MOE_RETURN_IF_ERROR(config.Validate());
  MOE_RETURN_IF_ERROR(CheckMoeWeights(config, weights, experts));
  std::unique_ptr<MoeBlock> block(new MoeBlock(config, backend, allocator));
  MOE_ASSIGN_OR_RETURN(block->weights_,
                       ExpertWeights::Create(config, weights, experts, backend, allocator));
  block->CopyWeightCounters();
  return block;
}

absl::Status MoeBlock::ReserveTokens(int64_t tokens) {
  if (tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("moe: tokens=", tokens, " is negative"));
  }
  const int64_t slots = tokens * config_.top_k;
  if (slots > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("moe: tokens=", tokens,
                                                   " times top_k=", config_.top_k,
                                                   " exceeds the row limit ", INT32_MAX));
  }
  last_routing_valid_ = false;  // the workspace may move
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(ForwardScratchBytes(config_, tokens)));
  if (config_.capacity_factor > 0.0f) {
    slots_host_.resize(std::max<size_t>(slots_host_.size(), slots));
    kept_slots_host_.resize(slots_host_.size());
    slot_to_row_host_.resize(slots_host_.size());
  }
  reserved_tokens_ = std::max(reserved_tokens_, tokens);
  return absl::OkStatus();
}

absl::Status MoeBlock::CheckActivation(absl::string_view name, const Tensor& t,
                                       int64_t tokens) const {
  const auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("moe: ", name, " ", what));
  };
  if (t.rank() != 2 || t.dim(1) != config_.hidden || (tokens >= 0 && t.dim(0) != tokens)) {
    const std::string rows = tokens >= 0 ? absl::StrCat(tokens) : "T";
    return invalid(absl::StrCat("has shape ", t.shape().ToString(), ", expected [", rows, ", ",
                                config_.hidden, "]"));
  }
  if (t.dtype() != config_.dtype) {
    return invalid(absl::StrCat("has dtype ", DTypeName(t.dtype()), ", expected ",
                                DTypeName(config_.dtype), " (config.dtype)"));
  }
  if (t.device() != backend_->device()) {
    return invalid(absl::StrCat("is on ", t.device().ToString(), ", expected ",
                                backend_->device().ToString(), " (the backend's device)"));
  }
  if (t.data() == nullptr && t.numel() > 0) return invalid("has no data");
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MoeBlock::Forward(const Tensor& x, const Tensor& out) {
  if (experts().count != config_.num_experts) {
    return absl::FailedPreconditionError(absl::StrCat(
        "moe: Forward needs all num_experts=", config_.num_experts, " experts; this block holds [",
        experts().first, ", ", experts().end(),
        ") (an expert-parallel rank's block runs through BeginForward / FinishForward)"));
  }
  MOE_RETURN_IF_ERROR(BeginStages(x, out, /*staged=*/false));
  const ForwardScratch& s = *scratch_;
  if (trace_.tokens > 0) {
    MOE_RETURN_IF_ERROR(ExpertGemms(
        s.rows, s.gate_up, s.act, kept_host_, offsets_host_,
        counts_on_device_ ? static_cast<const int64_t*>(s.counts.data()) : nullptr));
  }
  return FinishStages();
}

absl::StatusOr<MoeBlock::Dispatch> MoeBlock::BeginForward(const Tensor& x, const Tensor& out) {
  if (config_.capacity_factor > 0.0f) {
    return absl::FailedPreconditionError(
        absl::StrCat("moe: BeginForward is dropless; capacity_factor=", config_.capacity_factor,
                     " is not supported there"));
  }
  MOE_RETURN_IF_ERROR(BeginStages(x, out, /*staged=*/true));
  return Dispatch{scratch_->rows, counts_host_};
}

absl::StatusOr<Tensor> MoeBlock::FinishForward() {
  if (!pending_) {
    return absl::FailedPreconditionError("moe: FinishForward without a BeginForward before it");
  }
  return FinishStages();
}

absl::Status MoeBlock::BeginStages(const Tensor& x, const Tensor& out, bool staged) {
  pending_ = false;
  MOE_RETURN_IF_ERROR(CheckActivation("x", x, -1));
  const int64_t tokens = x.dim(0);
  MOE_RETURN_IF_ERROR(CheckActivation("out", out, tokens));
  if (tokens > reserved_tokens_) MOE_RETURN_IF_ERROR(ReserveTokens(tokens));
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(ForwardScratchBytes(config_, tokens)));
  MOE_ASSIGN_OR_RETURN(*scratch_, TakeForwardScratch(config_, tokens, &workspace_));
  const ForwardScratch& s = *scratch_;
  ++counters_.forward_calls;
  trace_.expert_path = ExpertPath::kNone;
  trace_.combine_path = CombinePath::kNone;
  trace_.tokens = tokens;
  counts_on_device_ =
      !staged && tokens <= counts_on_device_max_tokens_ && config_.capacity_factor <= 0.0f;
  trace_.counts.assign(config_.num_experts, 0);
  std::fill(counts_host_.begin(), counts_host_.end(), 0);
  trace_.expert_capacity = 0;
  trace_.dropped_rows = 0;
  last_ids_ = s.ids;
  last_weights_ = s.weights;
  last_routing_valid_ = true;
  pending_ = true;
  pending_x_ = x;
  pending_out_ = out;
  if (tokens == 0) return absl::OkStatus();

  // MOE_SEMANTICS 4.3 / 7.13: writing into storage that overlaps x (same buffer, a shifted
  // view, any partial overlap) would corrupt the input, which later steps and the caller's
  // residual still read; such calls get a block-owned output instead.
  pending_in_place_ = !out.Overlaps(x);
  MOE_RETURN_IF_ERROR(Route(x, s));
  MOE_RETURN_IF_ERROR(ApplyCapacity(s, tokens));
  return GatherRows(x, s);
}

absl::StatusOr<Tensor> MoeBlock::FinishStages() {
  pending_ = false;
  const ForwardScratch& s = *scratch_;
  if (trace_.tokens == 0) return pending_out_;
  const Tensor& target = pending_in_place_ ? pending_out_ : s.result;
  if (config_.num_shared_experts > 0) MOE_RETURN_IF_ERROR(RunShared(pending_x_, s, target));
  MOE_RETURN_IF_ERROR(RunCombine(s, target));

  if (counts_on_device_) {
    trace_.counts.clear();
  } else {
    std::copy(counts_host_.begin(), counts_host_.end(), trace_.counts.begin());
  }
  trace_.combine_path = pending_in_place_ ? CombinePath::kInPlace : CombinePath::kCopied;
  ++(pending_in_place_ ? counters_.in_place_combines : counters_.copied_combines);
  if (trace_.expert_path == ExpertPath::kBatched) ++counters_.batched_expert_calls;
  if (trace_.expert_path == ExpertPath::kGrouped) ++counters_.grouped_expert_calls;
  counters_.dropped_rows += trace_.dropped_rows;
  return target;
}

absl::Status MoeBlock::RunExpertGemms(const Tensor& rows, absl::Span<const int64_t> counts,
                                      absl::Span<const int64_t> offsets, const Tensor& gate_up,
                                      const Tensor& act) {
  const int64_t local = experts().count;
  if (static_cast<int64_t>(counts.size()) != local ||
      static_cast<int64_t>(offsets.size()) != local + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe: RunExpertGemms got ", counts.size(), " counts and ", offsets.size(),
                     " offsets, expected ", local, " and ", local + 1, " (experts [",
                     experts().first, ", ", experts().end(), "))"));
  }
  MOE_RETURN_IF_ERROR(CheckActivation("rows", rows, -1));
  const int64_t m = rows.dim(0);
  if (offsets[0] != 0 || offsets[local] != m) {
    return absl::InvalidArgumentError(absl::StrCat("moe: RunExpertGemms offsets span [",
                                                   offsets[0], ", ", offsets[local],
                                                   "), expected [0, rows=", m, ")"));
  }
  for (int64_t j = 0; j < local; ++j) {
    if (counts[j] < 0 || offsets[j + 1] - offsets[j] != counts[j]) {
      return absl::InvalidArgumentError(
          absl::StrCat("moe: RunExpertGemms counts[", j, "]=", counts[j], " but offsets give ",
                       offsets[j + 1] - offsets[j]));
    }
  }
  const auto check_scratch = [&](absl::string_view name, const Tensor& t, int64_t cols) {
    if (t.dtype() != config_.dtype || t.device() != backend_->device() ||
        t.numel() < m * cols || (t.data() == nullptr && m > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "moe: RunExpertGemms ", name, " holds ", t.numel(), " ", DTypeName(t.dtype()),
          " elements on ", t.device().ToString(), ", expected at least ", m * cols, " ",
          DTypeName(config_.dtype), " on ", backend_->device().ToString()));
    }
    return absl::OkStatus();
  };
  MOE_RETURN_IF_ERROR(check_scratch("gate_up", gate_up, 2 * config_.inter));
  MOE_RETURN_IF_ERROR(check_scratch("act", act, config_.inter));
  return ExpertGemms(rows, gate_up, act, counts, offsets, nullptr);
}

ExpertRange MoeBlock::experts() const { return weights_->experts(); }

absl::Status MoeBlock::UpdateExpertWeights(int64_t expert, const Tensor* w1, const Tensor* w3,
                                           const Tensor* w2) {
  const absl::Status s = weights_->UpdateExpert(expert, w1, w3, w2);
  CopyWeightCounters();
  return s;
}

void MoeBlock::CopyWeightCounters() {
  counters_.w13_rebuilds = weights_->w13_rebuilds();
  counters_.w2t_rebuilds = weights_->w2t_rebuilds();
  counters_.w13_packs = weights_->w13_packs();
  counters_.w2t_packs = weights_->w2t_packs();
  counters_.w13_unpacks = weights_->w13_unpacks();
}

size_t MoeBlock::packed_weight_bytes() const { return weights_->packed_bytes(); }

absl::Status MoeBlock::CopyLastRouting(std::vector<int32_t>* ids,
                                       std::vector<float>* weights) const {
  if (counters_.forward_calls == 0 || !last_routing_valid_) {
    return absl::FailedPreconditionError(
        "moe: no routing to copy (no Forward since the last "
        "ReserveTokens)");
  }
  ids->resize(last_ids_.numel());
  weights->resize(last_weights_.numel());
  MOE_RETURN_IF_ERROR(backend_->CopyToHost(ids->data(), last_ids_.data(), last_ids_.nbytes()));
  return backend_->CopyToHost(weights->data(), last_weights_.data(), last_weights_.nbytes());
}

}  // namespace moe
