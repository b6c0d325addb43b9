// Helpers of the CUDA op tests that compare against the CPU backend bit for bit: device
// buffers with a host image, random values in a dtype, and bitwise comparison of outputs.
#ifndef MOE_TESTS_UNIT_CUDA_OP_TEST_UTIL_H_
#define MOE_TESTS_UNIT_CUDA_OP_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include <memory>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe::cuda::testing {

using Bytes = std::vector<uint8_t>;

// "" if a CUDA device is usable, else why not (for GTEST_SKIP).
std::string NoDeviceReason();

// Device memory holding a copy of `host`; `offset` bytes of slack in front of the data shift
// it off the 16-byte alignment when wanted (the kernels' scalar paths).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const Bytes& host, size_t offset = 0);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }
  Bytes ToHost() const;

 private:
  size_t bytes_;
  void* base_ = nullptr;
  uint8_t* data_ = nullptr;
};

// n values uniform in [lo, hi), rounded to dtype (f32, bf16 or f16).
Bytes RandomValues(int64_t n, DType dtype, std::mt19937_64& rng, float lo, float hi);

// Floats stored in dtype (f32, bf16 or f16), rounded to nearest even.
Bytes Encode(const std::vector<float>& v, DType dtype);

// The raw bytes of a vector of trivially copyable values.
template <typename T>
Bytes AsBytes(const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  return Bytes(p, p + v.size() * sizeof(T));
}

// Special f32 values: zeros, infinities, NaNs with several payloads and signs, subnormals, the
// f16 and bf16 rounding edges, and the ends of the exp range (-86.5, 88.72).
std::vector<float> SpecialValues();

// Every element's bits equal (ADD_FAILURE for the first few that differ); with any_nan, a NaN
// matches any NaN.
void ExpectSameBits(const Bytes& got, const Bytes& want, DType dtype, bool any_nan = false);

// Base fixture of the launcher tests: skipped (with the reason) without a CUDA device; else a
// CPU backend to compare with (cpu_) and a stream for the launchers (stream_).
class CudaOpTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  std::unique_ptr<Backend> cpu_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace moe::cuda::testing

#endif  // MOE_TESTS_UNIT_CUDA_OP_TEST_UTIL_H_
