// Tensor: a non-owning, typed, contiguous (row-major) view of device memory, usually part of
// a Buffer. Copying a Tensor copies the view, never the data.
#ifndef MOE_ENGINE_CORE_TENSOR_H_
#define MOE_ENGINE_CORE_TENSOR_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/shape.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace moe {

class Tensor {
 public:
  Tensor() = default;

  // A view of `shape` elements of `dtype` starting `offset_bytes` into `buffer`.
  // InvalidArgument if the view does not fit in the buffer.
  static absl::StatusOr<Tensor> OnBuffer(const Buffer& buffer, DType dtype, Shape shape,
                                         int64_t offset_bytes = 0);
  // A view of memory owned elsewhere (a memory map, a caller's array).
  static Tensor Wrap(void* data, Device device, DType dtype, Shape shape);

  void* data() const { return data_; }
  // Typed pointer; FailedPrecondition if T does not match dtype().
  template <typename T>
  absl::StatusOr<T*> As() const {
    if (DTypeOf<T>::value != dtype_) return DTypeMismatch(DTypeOf<T>::value);
    return static_cast<T*>(data_);
  }

  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int i) const { return shape_.dim(i); }
  int64_t numel() const { return shape_.numel(); }
  int64_t nbytes() const { return numel() * DTypeSize(dtype_); }
  // Elements between consecutive indices of dimension i (contiguous row-major).
  int64_t stride(int i) const;

  // Rows [start, start + count) of dimension 0; OutOfRange if they are not all inside.
  absl::StatusOr<Tensor> Rows(int64_t start, int64_t count) const;
  // The same data with another shape of equal numel; InvalidArgument otherwise.
  absl::StatusOr<Tensor> Reshape(Shape shape) const;

  // True if the two views share at least one byte of memory on the same device.
  bool Overlaps(const Tensor& other) const;

  // "bf16[4, 2048] on cpu".
  std::string ToString() const;

 private:
  Tensor(void* data, Device device, DType dtype, Shape shape)
      : data_(data), device_(device), dtype_(dtype), shape_(std::move(shape)) {}
  absl::Status DTypeMismatch(DType wanted) const;

  void* data_ = nullptr;
  Device device_;
  DType dtype_ = DType::kF32;
  Shape shape_;
};

}  // namespace moe

#endif  // MOE_ENGINE_CORE_TENSOR_H_
