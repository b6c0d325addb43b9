// Pieces the layer tests share: a float64 nn.Linear for the naive references, host tensors
// that own their encoded values, and a device tensor with its buffer.
#ifndef MOE_TESTS_UNIT_LAYERS_LAYER_TEST_UTIL_H_
#define MOE_TESTS_UNIT_LAYERS_LAYER_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "kernels/dtype.h"

namespace moe::testing {

// y[r] = sum_j w[r, j] x[j] (+ b[r] when b is not empty): torch.nn.Linear, w [rows, cols].
std::vector<double> Linear(const std::vector<double>& w, const std::vector<double>& b,
                           const double* x, int64_t rows, int64_t cols);

// Host tensors over values encoded in a dtype; owns the storage. An empty value list gives a
// default Tensor ("not given").
class HostTensors {
 public:
  Tensor Add(const std::vector<double>& values, DType dtype, Shape shape);

 private:
  std::vector<std::unique_ptr<std::vector<uint8_t>>> storage_;
};

// A tensor over a buffer it owns.
struct DeviceTensor {
  std::unique_ptr<Buffer> buffer;
  Tensor tensor;
};

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_LAYERS_LAYER_TEST_UTIL_H_
