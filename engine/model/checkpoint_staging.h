// Checkpoint tensors as host tensors, for the layers' Create functions.
//
// safetensors data may start at any byte offset of the memory map, while the layers read
// weights as typed host tensors. CheckpointStaging checks a tensor against what the layout
// expects and lends it out in place, a read-only view of the map, when its data is aligned for
// its dtype (as safetensors writers align it); only a misaligned tensor is copied, into storage
// aligned for every weight dtype. Views and copies stay valid until the staging is destroyed
// (after the layer has taken what it needs from them); the map itself must outlive the staging.
// Destruction also drops the mapped pages of the viewed tensors from the process (the file's
// page cache keeps them), so that loading layer after layer holds about one layer of the
// checkpoint in memory, not every layer read so far.
//
// Thread-compatible.
#ifndef MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_
#define MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_

#include <cstddef>
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
  CheckpointStaging() = default;
  ~CheckpointStaging();
  CheckpointStaging(const CheckpointStaging&) = delete;
  CheckpointStaging& operator=(const CheckpointStaging&) = delete;

  // The checkpoint tensor `want.name` as a host tensor in its own dtype (F32, BF16 or F16),
  // to be read, never written. NotFound naming the checkpoint and tensor if absent;
  // InvalidArgument naming the file and the tensor for a shape other than want.shape or
  // another dtype.
  absl::StatusOr<Tensor> Load(const SafetensorsCheckpoint& checkpoint, const ExpectedTensor& want);

 private:
  struct MappedRange {
    const uint8_t* data;
    size_t bytes;
  };
  std::vector<std::unique_ptr<uint64_t[]>> storage_;
  std::vector<MappedRange> views_;
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_CHECKPOINT_STAGING_H_
