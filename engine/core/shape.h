// Shape: the extents of a tensor, outermost first.
#ifndef MOE_ENGINE_CORE_SHAPE_H_
#define MOE_ENGINE_CORE_SHAPE_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/container/inlined_vector.h"

namespace moe {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  template <typename It>
  Shape(It begin, It end) : dims_(begin, end) {}

  int rank() const { return static_cast<int>(dims_.size()); }
  // Extent of dimension i; negative i counts from the end (-1 = last).
  int64_t dim(int i) const { return dims_[i < 0 ? i + rank() : i]; }
  // Product of the extents (1 for rank 0).
  int64_t numel() const;
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + dims_.size(); }

  bool operator==(const Shape& o) const { return dims_ == o.dims_; }
  bool operator!=(const Shape& o) const { return !(*this == o); }

  // "[4, 2048]".
  std::string ToString() const;

 private:
  absl::InlinedVector<int64_t, 4> dims_;
};

}  // namespace moe

#endif  // MOE_ENGINE_CORE_SHAPE_H_
