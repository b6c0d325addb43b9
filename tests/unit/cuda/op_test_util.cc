#include "tests/unit/cuda/op_test_util.h"

#include <cuda_runtime.h>

#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/registry.h"

namespace moe::cuda::testing {
namespace {

uint32_t BitsAt(const Bytes& b, DType dtype, int64_t i) {
  if (DTypeSize(dtype) == 4) {
    uint32_t u;
    std::memcpy(&u, b.data() + 4 * i, 4);
    return u;
  }
  uint16_t u;
  std::memcpy(&u, b.data() + 2 * i, 2);
  return u;
}

bool IsNanBits(uint32_t bits, DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return (bits & 0x7fffffffu) > 0x7f800000u;
    case DType::kBF16:
      return (bits & 0x7fffu) > 0x7f80u;
    default:
      return (bits & 0x7fffu) > 0x7c00u;
  }
}

void Store(float f, DType dtype, uint8_t* p) {
  if (dtype == DType::kF32) {
    std::memcpy(p, &f, 4);
  } else if (dtype == DType::kBF16) {
    const bf16 b = FloatToBf16(f);
    std::memcpy(p, &b, 2);
  } else {
    const f16 h = FloatToF16(f);
    std::memcpy(p, &h, 2);
  }
}

}  // namespace

std::string NoDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(err) +
           " (" + cudaGetErrorString(err) + ")";
  }
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return "";
}

DeviceBuffer::DeviceBuffer(const Bytes& host, size_t offset) : bytes_(host.size()) {
  EXPECT_EQ(cudaMalloc(&base_, bytes_ + offset + 16), cudaSuccess);
  data_ = static_cast<uint8_t*>(base_) + offset;
  EXPECT_EQ(cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice), cudaSuccess);
}

DeviceBuffer::~DeviceBuffer() { cudaFree(base_); }

Bytes DeviceBuffer::ToHost() const {
  Bytes out(bytes_);
  EXPECT_EQ(cudaMemcpy(out.data(), data_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

Bytes RandomValues(int64_t n, DType dtype, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Bytes out(n * DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) Store(dist(rng), dtype, out.data() + i * DTypeSize(dtype));
  return out;
}

Bytes Encode(const std::vector<float>& v, DType dtype) {
  Bytes out(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) Store(v[i], dtype, out.data() + i * DTypeSize(dtype));
  return out;
}

std::vector<float> SpecialValues() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {0.0f,      -0.0f,       inf,        -inf,        1e-45f,       -1e-45f,
                          1.17e-38f, 6.1e-5f,     5.96e-8f,   2.98e-8f,    65504.0f,     65519.99f,
                          65520.0f,  -65520.0f,   3.4e38f,    -3.4e38f,    88.72f,       88.73f,
                          -86.49f,   -86.51f,     -88.8f,     -103.0f,     1.0f,         -1.0f,
                          0.5f,      1.00390625f, 1.0078125f, 1.01171875f, -1.00390625f, 20.0f};
  for (uint32_t u : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff812345u, 0x7fffffffu}) {
    float f;
    std::memcpy(&f, &u, 4);
    v.push_back(f);
  }
  return v;
}

void ExpectSameBits(const Bytes& got, const Bytes& want, DType dtype, bool any_nan) {
  ASSERT_EQ(got.size(), want.size());
  const int64_t n = static_cast<int64_t>(got.size()) / DTypeSize(dtype);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t g = BitsAt(got, dtype, i);
    const uint32_t w = BitsAt(want, dtype, i);
    if (g == w || (any_nan && IsNanBits(g, dtype) && IsNanBits(w, dtype))) continue;
    if (++bad <= 5) {
      ADD_FAILURE() << "element " << i << " of " << n << ": got 0x" << std::hex << g << ", want 0x"
                    << w;
    }
  }
  EXPECT_EQ(bad, 0) << "elements that differ, of " << n;
}

void CudaOpTest::SetUp() {
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend(Device::Cpu());
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  cpu_ = std::move(cpu).value();
  ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
}

void CudaOpTest::TearDown() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

}  // namespace moe::cuda::testing
