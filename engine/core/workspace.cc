#include "engine/core/workspace.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

absl::Status Workspace::Reserve(size_t bytes) {
  if (bytes <= capacity()) return absl::OkStatus();
  if (bytes > std::numeric_limits<size_t>::max() - (kAlignment - 1)) {
    // Aligned() would wrap to a tiny size and Reserve would "succeed" without the memory.
    return absl::ResourceExhaustedError(
        absl::StrCat("workspace: cannot reserve ", bytes, " bytes"));
  }
  if (used_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat("workspace: cannot grow to ", bytes,
                                                      " bytes while ", used_, " bytes are taken"));
  }
  buffer_.reset();  // free first so peak memory is the new size, not old + new
  MOE_ASSIGN_OR_RETURN(buffer_, allocator_->Allocate(Aligned(bytes)));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Workspace::Take(DType dtype, Shape shape) {
  // Checked like Tensor::OnBuffer: a negative or overflowing size must not wrap into a small one.
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("workspace: negative extent in shape ", shape.ToString()));
    }
    if (d == 0) empty = true;
  }
  size_t bytes = 0;
  if (!empty) {
    bytes = static_cast<size_t>(DTypeSize(dtype));
    for (int64_t d : shape) {
      if (__builtin_mul_overflow(bytes, static_cast<size_t>(d), &bytes) ||
          bytes > static_cast<size_t>(std::numeric_limits<int64_t>::max())) {
        return absl::InvalidArgumentError(
            absl::StrCat("workspace: ", DTypeName(dtype), shape.ToString(), " exceeds 2^63 bytes"));
      }
    }
  }
  const size_t need = used_ + Aligned(bytes);
  if (need > capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat("workspace: ", DTypeName(dtype),
                                                     shape.ToString(), " needs ", need,
                                                     " bytes in all; reserved ", capacity()));
  }
  if (buffer_ == nullptr) {
    // Only an empty slice gets here (capacity 0); there is no buffer to view yet.
    return Tensor::Wrap(nullptr, allocator_->backend()->device(), dtype, std::move(shape));
  }
  MOE_ASSIGN_OR_RETURN(Tensor t, Tensor::OnBuffer(*buffer_, dtype, std::move(shape), used_));
  used_ = need;
  return t;
}

}  // namespace moe
