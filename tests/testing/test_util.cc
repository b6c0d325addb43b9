#include "tests/testing/test_util.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace moe::testing {

uint64_t TestSeed() {
  if (const char* s = std::getenv("MOE_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

std::vector<double> RandomUniform(int64_t n, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

std::vector<double> RoundTo(const std::vector<double>& v, DType dtype) {
  return Decode(Encode(v, dtype).data(), static_cast<int64_t>(v.size()), dtype);
}

std::vector<uint8_t> Encode(const std::vector<double>& v, DType dtype) {
  std::vector<uint8_t> out(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = static_cast<float>(v[i]);
    if (dtype == DType::kBF16) {
      const bf16 b = FloatToBf16(f);
      std::memcpy(out.data() + 2 * i, &b, 2);
    } else {
      std::memcpy(out.data() + 4 * i, &f, 4);
    }
  }
  return out;
}

std::vector<double> Decode(const void* data, int64_t n, DType dtype) {
  std::vector<double> out(n);
  const auto* bytes = static_cast<const uint8_t*>(data);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::kBF16) {
      bf16 b;
      std::memcpy(&b, bytes + 2 * i, 2);
      out[i] = Bf16ToFloat(b);
    } else {
      float f;
      std::memcpy(&f, bytes + 4 * i, 4);
      out[i] = f;
    }
  }
  return out;
}

double MaxRelError(const std::vector<double>& got, const std::vector<double>& want) {
  double scale = 1e-30, err = 0.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double d = std::fabs(got[i] - want[i]);
    if (std::isnan(got[i]) || std::isnan(d)) return INFINITY;
    err = std::max(err, d);
  }
  if (got.size() != want.size()) return INFINITY;
  return err / scale;
}

}  // namespace moe::testing
