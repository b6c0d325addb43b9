#include "tests/unit/layers/layer_test_util.h"

#include <utility>

#include "tests/testing/test_util.h"

namespace moe::testing {

std::vector<double> Linear(const std::vector<double>& w, const std::vector<double>& b,
                           const double* x, int64_t rows, int64_t cols) {
  std::vector<double> y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) y[r] += w[r * cols + j] * x[j];
    if (!b.empty()) y[r] += b[r];
  }
  return y;
}

Tensor HostTensors::Add(const std::vector<double>& values, DType dtype, Shape shape) {
  if (values.empty()) return Tensor();
  storage_.push_back(std::make_unique<std::vector<uint8_t>>(Encode(values, dtype)));
  return Tensor::Wrap(storage_.back()->data(), Device::Cpu(), dtype, std::move(shape));
}

}  // namespace moe::testing
