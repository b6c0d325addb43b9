#include "engine/core/tensor.h"

#include "absl/strings/str_cat.h"

namespace moe {

absl::StatusOr<Tensor> Tensor::OnBuffer(const Buffer& buffer, DType dtype, Shape shape,
                                        int64_t offset_bytes) {
  for (int64_t d : shape) {
    if (d < 0)
      return absl::InvalidArgumentError(
          absl::StrCat("tensor: negative extent in shape ", shape.ToString()));
  }
  const int64_t bytes = shape.numel() * DTypeSize(dtype);
  if (offset_bytes < 0 || offset_bytes + bytes > static_cast<int64_t>(buffer.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor: ", DTypeName(dtype), shape.ToString(), " at offset ", offset_bytes,
                     " needs ", offset_bytes + bytes, " bytes; the buffer holds ", buffer.size()));
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
  if (start < 0 || count < 0 || start + count > dim(0)) {
    return absl::OutOfRangeError(
        absl::StrCat("tensor: rows [", start, ", ", start + count, ") outside [0, ", dim(0), ")"));
  }
  absl::InlinedVector<int64_t, 4> dims(shape_.begin(), shape_.end());
  dims[0] = count;
  return Tensor(static_cast<char*>(data_) + start * stride(0) * DTypeSize(dtype_), device_, dtype_,
                Shape(dims.begin(), dims.end()));
}

absl::StatusOr<Tensor> Tensor::Reshape(Shape shape) const {
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
