#include "engine/core/workspace.h"

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

absl::Status Workspace::Reserve(size_t bytes) {
  if (bytes <= capacity()) return absl::OkStatus();
  if (used_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat("workspace: cannot grow to ", bytes,
                                                      " bytes while ", used_, " bytes are taken"));
  }
  buffer_.reset();  // free first so peak memory is the new size, not old + new
  MOE_ASSIGN_OR_RETURN(buffer_, allocator_->Allocate(Aligned(bytes)));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Workspace::Take(DType dtype, Shape shape) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * DTypeSize(dtype);
  const size_t need = used_ + Aligned(bytes);
  if (need > capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat("workspace: ", DTypeName(dtype),
                                                     shape.ToString(), " needs ", need,
                                                     " bytes in all; reserved ", capacity()));
  }
  MOE_ASSIGN_OR_RETURN(Tensor t, Tensor::OnBuffer(*buffer_, dtype, std::move(shape), used_));
  used_ = need;
  return t;
}

}  // namespace moe
