#include "engine/model/checkpoint_staging.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

bool IsWeightDType(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

}  // namespace

CheckpointStaging::~CheckpointStaging() {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (const MappedRange& r : views_) {
    // Only the pages inside the tensor: a neighbour's first or last page may still be lent
    // out by another staging. Dropping a page of a read-only file map loses nothing (it is
    // read again from the file if touched), so this is advice, and its failure harmless; a
    // SafetensorsCheckpoint holds nothing but such maps (SafetensorsFile::Open), which this
    // relies on: on anonymous memory MADV_DONTNEED would zero the data.
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(r.data) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(r.data) + r.bytes) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
}

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
  const size_t bytes = static_cast<size_t>(t.byte_size);
  if (reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype) == 0) {
    views_.push_back({t.data, bytes});
    // The layers only read weights, so the map's read-only pages are never written.
    return Tensor::Wrap(const_cast<uint8_t*>(t.data), Device::Cpu(), t.dtype, t.shape);
  }
  // new[] of 8-byte words: aligned for every weight dtype, whatever the mapping's offset.
  const size_t words = (bytes + 7) / 8;
  storage_.push_back(std::make_unique<uint64_t[]>(words == 0 ? 1 : words));
  std::memcpy(storage_.back().get(), t.data, bytes);
  return Tensor::Wrap(storage_.back().get(), Device::Cpu(), t.dtype, t.shape);
}

}  // namespace moe
