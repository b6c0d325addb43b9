#include "engine/model/moe_layer_loader.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/tensor_source.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

bool IsMoeRole(TensorRole role) {
  switch (role) {
    case TensorRole::kRouter:
    case TensorRole::kRouterBias:
    case TensorRole::kExpert:
    case TensorRole::kSharedExpert:
    case TensorRole::kSharedExpertGate:
      return true;
    default:
      return false;
  }
}

}  // namespace

MoeConfig MoeLayerConfig(const ModelConfig& config, DType run_dtype) {
  MoeConfig moe = config.moe;
  moe.dtype = run_dtype;
  return moe;
}

absl::StatusOr<std::unique_ptr<MoeBlock>> LoadMoeLayer(const ModelConfig& config,
                                                       const SafetensorsCheckpoint& checkpoint,
                                                       int layer, DType run_dtype, Backend* backend,
                                                       Allocator* allocator) {
  return LoadMoeLayer(config, CheckpointTensorSource(checkpoint), layer, run_dtype, backend,
                      allocator);
}

absl::StatusOr<MoeWeights> LoadMoeLayerWeights(const ModelConfig& config, TensorStaging& staging,
                                               int layer, ExpertRange experts) {
  if (layer < 0 || layer >= config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoadMoeLayer: layer ", layer, " is out of range [0, ", config.num_hidden_layers, ")"));
  }
  if (static_cast<size_t>(layer) >= config.layer_is_moe.size() || !config.layer_is_moe[layer]) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadMoeLayer: layer ", layer, " is a dense layer, not an MoE layer"));
  }
  MoeWeights weights;
  weights.w1.resize(experts.count);
  weights.w3.resize(experts.count);
  weights.w2.resize(experts.count);
  const std::vector<ExpectedTensor> wanted =
      ExpectedTensorsWithExperts(ExpectedTensors(config), experts.first, experts.count);
  for (const ExpectedTensor& want : wanted) {
    if (want.layer != layer || !IsMoeRole(want.role)) continue;
    MOE_ASSIGN_OR_RETURN(Tensor t, staging.Load(want));
    const absl::string_view name = want.name;
    // Mixtral names the projections w1 / w3 / w2, the other families gate / up / down_proj.
    const bool is_w1 =
        absl::EndsWith(name, ".w1.weight") || absl::EndsWith(name, ".gate_proj.weight");
    const bool is_w3 =
        absl::EndsWith(name, ".w3.weight") || absl::EndsWith(name, ".up_proj.weight");
    switch (want.role) {
      case TensorRole::kRouter:
        weights.gate = t;
        break;
      case TensorRole::kRouterBias:
        // transformers holds the bias even when the config routes without it.
        if (config.moe.use_expert_bias) weights.expert_bias = t;
        break;
      case TensorRole::kExpert:
        (is_w1 ? weights.w1 : is_w3 ? weights.w3 : weights.w2)[want.expert - experts.first] = t;
        break;
      case TensorRole::kSharedExpert:
        (is_w1 ? weights.shared_w1 : is_w3 ? weights.shared_w3 : weights.shared_w2) = t;
        break;
      case TensorRole::kSharedExpertGate:
        weights.shared_gate = t;
        break;
      default:
        break;
    }
  }
  return weights;
}

absl::StatusOr<std::unique_ptr<MoeBlock>> LoadMoeLayer(const ModelConfig& config,
                                                       const TensorSource& source, int layer,
                                                       DType run_dtype, Backend* backend,
                                                       Allocator* allocator) {
  const std::unique_ptr<TensorStaging> staging = source.NewStaging();
  MOE_ASSIGN_OR_RETURN(
      const MoeWeights weights,
      LoadMoeLayerWeights(config, *staging, layer, {0, config.moe.num_experts}));
  return MoeBlock::Create(MoeLayerConfig(config, run_dtype), weights, backend, allocator);
}

absl::StatusOr<std::unique_ptr<EpMoeBlock>> LoadEpMoeLayer(const ModelConfig& config,
                                                           const TensorSource& source, int layer,
                                                           DType run_dtype, Communicator* comm,
                                                           const EpMoeOptions& options,
                                                           Backend* backend, Allocator* allocator) {
  if (comm == nullptr) return absl::InvalidArgumentError("LoadEpMoeLayer: null communicator");
  MOE_ASSIGN_OR_RETURN(const ExpertPlacement placement,
                       ExpertPlacement::Create(config.moe.num_experts, comm->size()));
  const std::unique_ptr<TensorStaging> staging = source.NewStaging();
  MOE_ASSIGN_OR_RETURN(
      const MoeWeights weights,
      LoadMoeLayerWeights(config, *staging, layer, placement.RangeOf(comm->rank())));
  return EpMoeBlock::Create(MoeLayerConfig(config, run_dtype), weights, comm, backend, allocator,
                            options);
}

}  // namespace moe
