#include "engine/core/tensor.h"

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// Bytes of a dtype x shape view. Checked because shapes come from files and requests: a
// negative extent, or a product past int64 (which would wrap to a small or zero size and let
// a huge view pass the bounds check), is InvalidArgument.
absl::StatusOr<int64_t> ViewBytes(DType dtype, const Shape& shape) {
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor: negative extent in shape ", shape.ToString()));
    }
    if (d == 0) empty = true;
  }
  if (empty) return 0;
  int64_t bytes = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(bytes, d, &bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor: ", DTypeName(dtype), shape.ToString(), " exceeds 2^63 bytes"));
    }
  }
  return bytes;
}

}  // namespace

absl::StatusOr<Tensor> Tensor::OnBuffer(const Buffer& buffer, DType dtype, Shape shape,
                                        int64_t offset_bytes) {
  MOE_ASSIGN_OR_RETURN(const int64_t bytes, ViewBytes(dtype, shape));
  if (offset_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor: ", DTypeName(dtype), shape.ToString(),
                                                   " at negative offset ", offset_bytes));
  }
  const int64_t size = static_cast<int64_t>(buffer.size());
  if (offset_bytes > size || bytes > size - offset_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor: ", DTypeName(dtype), shape.ToString(), " at offset ", offset_bytes, " needs ",
        // Unsigned: both are below 2^63, so the sum cannot wrap.
        static_cast<uint64_t>(offset_bytes) + static_cast<uint64_t>(bytes),
        " bytes; the buffer holds ", buffer.size()));
  }
  return Tensor(static_cast<char*>(buffer.data()) + offset_bytes, buffer.device(), dtype,
                std::move(shape));
}

Tensor Tensor::Wrap(void* data, Device device, DType dtype, Shape shape) {
  return Tensor(data, device, dtype, std::move(shape));
}

int64_t Tensor::stride(int i) const {
  if (i < 0) i += rank();
  int64_t s = 1;
  for (int j = i + 1; j < rank(); ++j) s *= shape_.dim(j);
  return s;
}

absl::StatusOr<Tensor> Tensor::Rows(int64_t start, int64_t count) const {
  if (rank() == 0) return absl::InvalidArgumentError("tensor: Rows of a rank-0 tensor");
  if (start < 0 || count < 0 || start > dim(0) || count > dim(0) - start) {
    // Unsigned where both are non-negative, so a huge count cannot wrap in the message.
    const std::string end =
        start >= 0 && count >= 0
            ? absl::StrCat(static_cast<uint64_t>(start) + static_cast<uint64_t>(count))
            : absl::StrCat(start + count);
    return absl::OutOfRangeError(
        absl::StrCat("tensor: rows [", start, ", ", end, ") outside [0, ", dim(0), ")"));
  }
  absl::InlinedVector<int64_t, 4> dims(shape_.begin(), shape_.end());
  dims[0] = count;
  return Tensor(static_cast<char*>(data_) + start * stride(0) * DTypeSize(dtype_), device_, dtype_,
                Shape(dims.begin(), dims.end()));
}

absl::StatusOr<Tensor> Tensor::Reshape(Shape shape) const {
  MOE_RETURN_IF_ERROR(ViewBytes(dtype_, shape).status());
  if (shape.numel() != numel()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor: cannot reshape ", shape_.ToString(),
                                                   " (", numel(), " elements) to ",
                                                   shape.ToString(), " (", shape.numel(), ")"));
  }
  return Tensor(data_, device_, dtype_, std::move(shape));
}

bool Tensor::Overlaps(const Tensor& other) const {
  if (device_ != other.device_ || nbytes() == 0 || other.nbytes() == 0) return false;
  const auto a = reinterpret_cast<uintptr_t>(data_);
  const auto b = reinterpret_cast<uintptr_t>(other.data_);
  return a < b + other.nbytes() && b < a + nbytes();
}

std::string Tensor::ToString() const {
  return absl::StrCat(DTypeName(dtype_), shape_.ToString(), " on ", device_.ToString());
}

absl::Status Tensor::DTypeMismatch(DType wanted) const {
  return absl::FailedPreconditionError(
      absl::StrCat("tensor: requested ", DTypeName(wanted), " data of a ", ToString()));
}

}  // namespace moe
