// Aligned host copies of checkpoint tensors, for the layers' Create functions.
//
// safetensors data may start at any byte offset of the memory map, while the layers read
// weights as typed host tensors. CheckpointStaging copies a tensor out of the map into storage
// aligned for every weight dtype, after checking it against what the layout expects, and keeps
// the copies alive until it is destroyed (after the layer has converted them).
//
// Thread-compatible.
#ifndef MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_
#define MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/safetensors_index.h"

namespace moe {

class CheckpointStaging {
 public:
  // The checkpoint tensor `want.name` as a host tensor in its own dtype (F32, BF16 or F16).
  // NotFound naming the checkpoint and tensor if absent; InvalidArgument naming the file and
  // the tensor for a shape other than want.shape or another dtype.
  absl::StatusOr<Tensor> Load(const SafetensorsCheckpoint& checkpoint, const ExpectedTensor& want);

 private:
  std::vector<std::unique_ptr<uint64_t[]>> storage_;
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_
