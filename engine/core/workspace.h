// Workspace: scratch memory reused across calls so a hot path does not allocate.
// A caller first Reserve()s the bytes it will need (allocating only when that exceeds the
// current capacity), then Take()s aligned slices; Reset() returns all slices at once.
#ifndef MOE_ENGINE_CORE_WORKSPACE_H_
#define MOE_ENGINE_CORE_WORKSPACE_H_

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/shape.h"
#include "engine/core/tensor.h"

namespace moe {

class Workspace {
 public:
  static constexpr size_t kAlignment = 256;  // enough for AVX-512 and CUDA vector loads

  explicit Workspace(Allocator* allocator) : allocator_(allocator) {}

  // Bytes a slice of `bytes` occupies, alignment included: sum these to size Reserve().
  static size_t Aligned(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

  // Makes capacity at least `bytes`. Invalidates earlier slices when it has to grow, so call it
  // before any Take() of a call. FailedPrecondition if slices are outstanding and it must grow.
  absl::Status Reserve(size_t bytes);
  // Returns every slice.
  void Reset() { used_ = 0; }

  // A tensor view of the next free bytes; ResourceExhausted naming the sizes if the reserved
  // capacity is too small (a sizing bug in the caller, not a reason to allocate).
  absl::StatusOr<Tensor> Take(DType dtype, Shape shape);

  size_t capacity() const { return buffer_ ? buffer_->size() : 0; }
  size_t used() const { return used_; }

 private:
  Allocator* allocator_;
  std::unique_ptr<Buffer> buffer_;
  size_t used_ = 0;
};

}  // namespace moe

#endif  // MOE_ENGINE_CORE_WORKSPACE_H_
