#include "engine/model/checkpoint_staging.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

bool IsWeightDType(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

}  // namespace

absl::StatusOr<Tensor> CheckpointStaging::Load(const SafetensorsCheckpoint& checkpoint,
                                               const ExpectedTensor& want) {
  MOE_ASSIGN_OR_RETURN(SafetensorsTensor t, checkpoint.Tensor(want.name));
  const SafetensorsFile* file = checkpoint.FileOf(want.name);
  const std::string source = file != nullptr ? file->path() : std::string("checkpoint");
  if (t.shape != want.shape) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", want.name,
                                                   "\" has shape ", t.shape.ToString(),
                                                   ", expected ", want.shape.ToString()));
  }
  if (!IsWeightDType(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", want.name,
                                                   "\" has dtype ", DTypeName(t.dtype),
                                                   ", expected F32, BF16 or F16"));
  }
  // new[] of 8-byte words: aligned for every weight dtype, whatever the mapping's offset.
  const size_t words = (static_cast<size_t>(t.byte_size) + 7) / 8;
  storage_.push_back(std::make_unique<uint64_t[]>(words == 0 ? 1 : words));
  std::memcpy(storage_.back().get(), t.data, static_cast<size_t>(t.byte_size));
  return Tensor::Wrap(storage_.back().get(), Device::Cpu(), t.dtype, t.shape);
}

}  // namespace moe
