// Builds the MoE block of one layer from a Hugging Face checkpoint.
//
// The layer's router gate, DeepSeek-V3's e_score_correction_bias, the routed experts'
// gate/up/down projections (Mixtral: w1/w3/w2), the shared experts and Qwen2-MoE's
// shared_expert_gate are read under the names of ExpectedTensors (checkpoint_layout.h) from a
// TensorSource (tensor_source.h: the checkpoint's memory map, aligned, or random values) and
// handed to MoeBlock::Create, which converts them to run_dtype and fuses them. The staging is
// freed before returning; the block keeps no reference to the source.
//
// Thread-safety: a free function; the checkpoint is only read. The backend and allocator are
// used as MoeBlock::Create uses them and must outlive the block.
#ifndef MOE_ENGINE_MODEL_MOE_LAYER_LOADER_H_
#define MOE_ENGINE_MODEL_MOE_LAYER_LOADER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/ep_moe_block.h"
#include "engine/layers/moe/moe_block.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors_index.h"
#include "engine/model/tensor_source.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe {

// The MoeConfig of `config`'s MoE layers with dtype = run_dtype.
MoeConfig MoeLayerConfig(const ModelConfig& config, DType run_dtype);

// The MoE block of layer `layer` (0-based) of `checkpoint`, computing in run_dtype (f32 or bf16).
// Errors:
//   InvalidArgument  layer outside [0, num_hidden_layers) or a dense layer, naming the layer:
//                    "LoadMoeLayer: layer 0 is a dense layer, not an MoE layer";
//                    a tensor of a shape other than ExpectedTensors' or of a dtype other than
//                    F32 / BF16 / F16, naming the file and the tensor:
//                    "<file>: tensor \"...\" has shape [8, 65], expected [8, 64]".
//   NotFound         a tensor missing, naming the checkpoint and the tensor.
//   Unimplemented    a tensor of a dtype the reader does not support, naming it.
//   Anything MoeBlock::Create returns (an invalid run_dtype, ResourceExhausted).
absl::StatusOr<std::unique_ptr<MoeBlock>> LoadMoeLayer(const ModelConfig& config,
                                                       const SafetensorsCheckpoint& checkpoint,
                                                       int layer, DType run_dtype, Backend* backend,
                                                       Allocator* allocator);

// The same from any TensorSource (errors: the source's instead of the checkpoint's).
absl::StatusOr<std::unique_ptr<MoeBlock>> LoadMoeLayer(const ModelConfig& config,
                                                       const TensorSource& source, int layer,
                                                       DType run_dtype, Backend* backend,
                                                       Allocator* allocator);

// The weights of layer `layer`'s MoE block loaded from `staging` (valid while it lives): the
// router (and bias), the shared experts (and gate) and only the routed experts of `experts`
// (w1 / w3 / w2 entry j is expert experts.first + j); no tensor of another routed expert is
// loaded. Errors as LoadMoeLayer's, before MoeBlock::Create.
absl::StatusOr<MoeWeights> LoadMoeLayerWeights(const ModelConfig& config, TensorStaging& staging,
                                               int layer, ExpertRange experts);

// The expert-parallel block of layer `layer` for rank comm->rank() of comm->size(): the rank's
// experts (ExpertPlacement) are the only routed experts read from `source`. Errors as
// LoadMoeLayer's and EpMoeBlock::Create's.
absl::StatusOr<std::unique_ptr<EpMoeBlock>> LoadEpMoeLayer(const ModelConfig& config,
                                                           const TensorSource& source, int layer,
                                                           DType run_dtype, Communicator* comm,
                                                           const EpMoeOptions& options,
                                                           Backend* backend, Allocator* allocator);

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_MOE_LAYER_LOADER_H_
