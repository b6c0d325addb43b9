// The cuBLASLt GEMMs and the CUDA PackedWeights against a float64 reference and the CPU
// backend. Needs a CUDA device: without one the GPU tests are skipped (reported as skipped,
// never as passed); the Status mapping runs everywhere.
#include "kernels/cuda/gemm.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_packed_weights.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe::cuda {
namespace {

using ::moe::testing::Decode;
using ::moe::testing::Encode;
using ::moe::testing::MaxRelError;
using ::moe::testing::OpTol;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::testing::HasSubstr;

std::string NoDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return std::string("no CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(err);
  }
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return "";
}

// Device memory holding a copy of host bytes.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), cudaSuccess);
  }
  explicit DeviceBuffer(const std::vector<uint8_t>& host) : DeviceBuffer(host.size()) {
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  std::vector<uint8_t> Download() const {
    std::vector<uint8_t> host(bytes_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A stored rows x cols matrix (ld >= cols), `count` of them `stride` apart, values exactly
// representable in `dtype`; ld padding holds values too, so a read of it would show.
struct Matrices {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  int64_t count = 1;
  int64_t stride = 0;
  DType dtype = DType::kF32;
  std::vector<double> values;  // count * stride (or rows * ld) entries
  double at(int64_t i, int64_t r, int64_t c) const { return values[i * stride + r * ld + c]; }
};

Matrices RandomMatrices(int64_t rows, int64_t cols, int64_t pad, int64_t count, DType dtype,
                        std::mt19937_64& rng) {
  Matrices m;
  m.rows = rows;
  m.cols = cols;
  m.ld = cols + pad;
  m.count = count;
  m.stride = rows * m.ld;
  m.dtype = dtype;
  m.values = RoundTo(RandomUniform(count * m.stride, rng), dtype);
  return m;
}

// C[m, n] = op(A) op(B) in float64 for matrix i (A rows from row0 on).
std::vector<double> Reference(const Matrices& a, bool trans_a, int64_t ia, int64_t row0,
                              const Matrices& b, bool trans_b, int64_t ib, int64_t m, int64_t n,
                              int64_t k) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = trans_a ? a.at(ia, p, row0 + r) : a.at(ia, row0 + r, p);
        const double bv = trans_b ? b.at(ib, j, p) : b.at(ib, p, j);
        sum += av * bv;
      }
      c[r * n + j] = sum;
    }
  }
  return c;
}

// The m x n block of a stored C (leading dim ldc) starting at element `first`.
std::vector<double> Block(const std::vector<uint8_t>& c, DType t, int64_t first, int64_t m,
                          int64_t n, int64_t ldc) {
  const std::vector<double> all = Decode(c.data(), static_cast<int64_t>(c.size()) / DTypeSize(t), t);
  std::vector<double> out(m * n);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) out[r * n + j] = all[first + r * ldc + j];
  }
  return out;
}

std::vector<uint8_t> BlockBytes(const std::vector<uint8_t>& c, DType t, int64_t first, int64_t m,
                                int64_t n, int64_t ldc) {
  const int64_t size = DTypeSize(t);
  std::vector<uint8_t> out;
  for (int64_t r = 0; r < m; ++r) {
    const uint8_t* row = c.data() + (first + r * ldc) * size;
    out.insert(out.end(), row, row + n * size);
  }
  return out;
}

constexpr uint8_t kSentinel = 0x5a;

class CublasLtGemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoDeviceReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    absl::StatusOr<std::unique_ptr<CublasLtGemm>> g = CublasLtGemm::Create();
    ASSERT_TRUE(g.ok()) << g.status();
    gemm_ = std::move(*g);
  }
  void TearDown() override {
    gemm_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // C buffer of `count` matrices [m, ldc] filled with the sentinel.
  std::unique_ptr<DeviceBuffer> OutputBuffer(int64_t elements, DType t) {
    auto buf = std::make_unique<DeviceBuffer>(elements * DTypeSize(t));
    EXPECT_EQ(cudaMemset(buf->get(), kSentinel, elements * DTypeSize(t)), cudaSuccess);
    return buf;
  }

  std::unique_ptr<CudaPackedWeights> Pack(const Matrices& b, bool trans_b, const void* device_b,
                                          int64_t k, int64_t n) {
    PackWeightsArgs p;
    p.batch = b.count;
    p.k = k;
    p.n = n;
    p.b = device_b;
    p.dtype = b.dtype;
    p.ldb = b.ld;
    p.trans_b = trans_b;
    p.stride_b = b.stride;
    absl::StatusOr<std::unique_ptr<CudaPackedWeights>> packed =
        CudaPackedWeights::Create(nullptr, p, stream_);
    EXPECT_TRUE(packed.ok()) << packed.status();
    return packed.ok() ? std::move(*packed) : nullptr;
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CublasLtGemm> gemm_;
};

struct Shape {
  int64_t m, n, k;
};

// Every dtype combination, transpose and an odd / round shape mix, with and without ld
// padding: against float64, and against the CPU backend (other kernels, so other bits, within
// the same tolerance). Padding of C must stay untouched.
TEST_F(CublasLtGemmTest, MatchesReferenceAndCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  CpuBackend cpu;
  const std::vector<Shape> shapes = {{1, 1, 1},    {1, 7, 5},    {3, 24, 33},  {17, 130, 256},
                                     {3, 7, 5},    {17, 1, 33},  {64, 24, 1},  {1, 4096, 64},
                                     {64, 128, 96}, {17, 130, 5}, {3, 9, 256}};
  for (DType ab : {DType::kF32, DType::kBF16}) {
    for (DType ct : {DType::kF32, DType::kBF16}) {
      for (bool trans_a : {false, true}) {
        for (bool trans_b : {false, true}) {
          for (size_t s = 0; s < shapes.size(); ++s) {
            const Shape sh = shapes[s];
            const int64_t pad = s % 2 == 0 ? 0 : 3;
            SCOPED_TRACE(::testing::Message()
                         << DTypeName(ab) << "->" << DTypeName(ct) << " m=" << sh.m << " n="
                         << sh.n << " k=" << sh.k << " trans_a=" << trans_a
                         << " trans_b=" << trans_b << " pad=" << pad);
            const Matrices a = RandomMatrices(trans_a ? sh.k : sh.m, trans_a ? sh.m : sh.k, pad,
                                              1, ab, rng);
            const Matrices b = RandomMatrices(trans_b ? sh.n : sh.k, trans_b ? sh.k : sh.n, pad,
                                              1, ab, rng);
            const int64_t ldc = sh.n + pad;
            const std::vector<uint8_t> a_bytes = Encode(a.values, ab);
            const std::vector<uint8_t> b_bytes = Encode(b.values, ab);
            DeviceBuffer da(a_bytes), db(b_bytes);
            auto dc = OutputBuffer(sh.m * ldc, ct);
            GemmArgs g;
            g.m = sh.m;
            g.n = sh.n;
            g.k = sh.k;
            g.a = da.get();
            g.a_dtype = ab;
            g.lda = a.ld;
            g.trans_a = trans_a;
            g.b = db.get();
            g.b_dtype = ab;
            g.ldb = b.ld;
            g.trans_b = trans_b;
            g.c = dc->get();
            g.c_dtype = ct;
            g.ldc = ldc;
            const absl::Status st = gemm_->Gemm(g, stream_);
            ASSERT_TRUE(st.ok()) << st;
            const std::vector<uint8_t> c = dc->Download();
            const std::vector<double> want =
                Reference(a, trans_a, 0, 0, b, trans_b, 0, sh.m, sh.n, sh.k);
            const std::vector<double> got = Block(c, ct, 0, sh.m, sh.n, ldc);
            EXPECT_LE(MaxRelError(got, want), OpTol(ct));
            for (int64_t r = 0; r < sh.m; ++r) {
              for (int64_t j = sh.n; j < ldc; ++j) {
                ASSERT_EQ(c[(r * ldc + j) * DTypeSize(ct)], kSentinel) << "row " << r;
              }
            }

            std::vector<uint8_t> a_host = a_bytes, b_host = b_bytes;
            std::vector<uint8_t> c_cpu(sh.m * ldc * DTypeSize(ct), 0);
            GemmArgs h = g;
            h.a = a_host.data();
            h.b = b_host.data();
            h.c = c_cpu.data();
            ASSERT_TRUE(cpu.Gemm(h).ok());
            EXPECT_LE(MaxRelError(got, Block(c_cpu, ct, 0, sh.m, sh.n, ldc)), OpTol(ct));
          }
        }
      }
    }
  }
}

TEST_F(CublasLtGemmTest, KZeroWritesZeros) {
  for (DType ct : {DType::kF32, DType::kBF16}) {
    auto dc = OutputBuffer(3 * 5, ct);
    DeviceBuffer dummy(64);
    GemmArgs g;
    g.m = 3;
    g.n = 4;
    g.k = 0;
    g.a = dummy.get();
    g.a_dtype = DType::kBF16;
    g.lda = 0;
    g.b = dummy.get();
    g.b_dtype = DType::kBF16;
    g.ldb = 4;
    g.c = dc->get();
    g.c_dtype = ct;
    g.ldc = 5;
    ASSERT_TRUE(gemm_->Gemm(g, stream_).ok());
    const std::vector<uint8_t> c = dc->Download();
    EXPECT_THAT(Block(c, ct, 0, 3, 4, 5), ::testing::Each(0.0));
    for (int64_t r = 0; r < 3; ++r) EXPECT_EQ(c[(r * 5 + 4) * DTypeSize(ct)], kSentinel);
  }
}

// The equal-count fast path: one batched call equals the matrices one at a time, bit for bit,
// with a plain B (both transposes) and with a packed B.
TEST_F(CublasLtGemmTest, BatchedEqualsOneByOne) {
  std::mt19937_64 rng(11);
  for (DType ab : {DType::kF32, DType::kBF16}) {
    for (bool trans_a : {false, true}) {
      for (int b_mode = 0; b_mode < 3; ++b_mode) {  // [k, n], [n, k], packed
        const bool trans_b = b_mode == 1;
        const DType ct = ab;
        const int64_t batch = 5, m = 17, n = 136, k = 96;
        SCOPED_TRACE(::testing::Message() << DTypeName(ab) << " trans_a=" << trans_a
                                          << " b_mode=" << b_mode);
        const Matrices a = RandomMatrices(trans_a ? k : m, trans_a ? m : k, 8, batch, ab, rng);
        const Matrices b = RandomMatrices(trans_b ? n : k, trans_b ? k : n, 0, batch, ab, rng);
        DeviceBuffer da(Encode(a.values, ab)), db(Encode(b.values, ab));
        std::unique_ptr<CudaPackedWeights> packed;
        if (b_mode == 2) packed = Pack(b, trans_b, db.get(), k, n);
        const int64_t ldc = n, stride_c = m * ldc;
        auto batched = OutputBuffer(batch * stride_c, ct);
        auto single = OutputBuffer(batch * stride_c, ct);
        BatchedGemmArgs args;
        GemmArgs& g = args.gemm;
        g = {};
        g.m = m;
        g.n = n;
        g.k = k;
        g.a = da.get();
        g.a_dtype = ab;
        g.lda = a.ld;
        g.trans_a = trans_a;
        g.b = db.get();
        g.b_dtype = ab;
        g.ldb = b.ld;
        g.trans_b = trans_b;
        g.c = batched->get();
        g.c_dtype = ct;
        g.ldc = ldc;
        g.packed_b = packed.get();
        args.batch = batch;
        args.stride_a = a.stride;
        args.stride_b = b.stride;
        args.stride_c = stride_c;
        ASSERT_TRUE(gemm_->BatchedGemm(args, stream_).ok());
        for (int64_t i = 0; i < batch; ++i) {
          GemmArgs one = g;
          one.a = static_cast<const char*>(g.a) + i * a.stride * DTypeSize(ab);
          one.b = static_cast<const char*>(g.b) + i * b.stride * DTypeSize(ab);
          one.packed_b_index = i;
          one.c = static_cast<char*>(single->get()) + i * stride_c * DTypeSize(ct);
          ASSERT_TRUE(gemm_->Gemm(one, stream_).ok());
        }
        const std::vector<uint8_t> got = batched->Download();
        EXPECT_EQ(got, single->Download());
        for (int64_t i = 0; i < batch; ++i) {
          EXPECT_LE(MaxRelError(Block(got, ct, i * stride_c, m, n, ldc),
                                Reference(a, trans_a, i, 0, b, trans_b, i, m, n, k)),
                    OpTol(ct))
              << "matrix " << i;
        }
      }
    }
  }
}

// Variable segments with empty ones (first, middle, last); each segment equals a plain GEMM
// of its rows bit for bit, and the reference.
// The second offsets set has segments of up to 100 rows (the segment kernel, one launch, for
// this small B); the third mixes short ones with a 300-row one (cuBLASLt).
TEST_F(CublasLtGemmTest, GroupedWithEmptySegments) {
  std::mt19937_64 rng(12);
  for (const std::vector<int64_t>& offsets :
       {std::vector<int64_t>{0, 0, 5, 5, 22, 23, 23, 40, 40},
        std::vector<int64_t>{0, 3, 3, 103, 170, 171, 171, 236},
        std::vector<int64_t>{0, 2, 302, 302, 345}}) {
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t rows = offsets.back(), n = 72, k = 64;
  for (DType ab : {DType::kF32, DType::kBF16}) {
    for (int b_mode = 0; b_mode < 3; ++b_mode) {
      const bool trans_b = b_mode == 1;
      SCOPED_TRACE(::testing::Message() << DTypeName(ab) << " b_mode=" << b_mode);
      const DType ct = DType::kBF16;
      const Matrices a = RandomMatrices(rows, k, 0, 1, ab, rng);
      const Matrices b = RandomMatrices(trans_b ? n : k, trans_b ? k : n, 0, groups, ab, rng);
      DeviceBuffer da(Encode(a.values, ab)), db(Encode(b.values, ab));
      std::unique_ptr<CudaPackedWeights> packed;
      if (b_mode == 2) packed = Pack(b, trans_b, db.get(), k, n);
      auto grouped = OutputBuffer(rows * n, ct);
      auto single = OutputBuffer(rows * n, ct);
      GroupedGemmArgs args;
      GemmArgs& g = args.gemm;
      g.n = n;
      g.k = k;
      g.a = da.get();
      g.a_dtype = ab;
      g.lda = k;
      g.b = db.get();
      g.b_dtype = ab;
      g.ldb = b.ld;
      g.trans_b = trans_b;
      g.c = grouped->get();
      g.c_dtype = ct;
      g.ldc = n;
      g.packed_b = packed.get();
      args.num_groups = groups;
      args.offsets = offsets.data();
      args.stride_b = b.stride;
      ASSERT_TRUE(gemm_->GroupedGemm(args, stream_).ok());
      for (int64_t i = 0; i < groups; ++i) {
        if (offsets[i + 1] == offsets[i]) continue;
        GemmArgs one = g;
        one.m = offsets[i + 1] - offsets[i];
        one.a = static_cast<const char*>(g.a) + offsets[i] * k * DTypeSize(ab);
        one.b = static_cast<const char*>(g.b) + i * b.stride * DTypeSize(ab);
        one.packed_b_index = i;
        one.c = static_cast<char*>(single->get()) + offsets[i] * n * DTypeSize(ct);
        ASSERT_TRUE(gemm_->Gemm(one, stream_).ok());
      }
      const std::vector<uint8_t> got = grouped->Download();
      EXPECT_EQ(got, single->Download());
      for (int64_t i = 0; i < groups; ++i) {
        const int64_t m = offsets[i + 1] - offsets[i];
        if (m == 0) continue;
        EXPECT_LE(MaxRelError(Block(got, ct, offsets[i] * n, m, n, n),
                              Reference(a, false, 0, offsets[i], b, trans_b, i, m, n, k)),
                  OpTol(ct))
            << "group " << i;
      }
    }
  }
  }
}

// Segment sizes in device memory (the MoE block with counts kept on the device): the same bits
// as host offsets, with empty, short and multi-tile segments; counts summing past m are
// clipped to m rows (C beyond them untouched); counts the segment kernel cannot take
// (misaligned lda) still give the host-offset result.
TEST_F(CublasLtGemmTest, GroupedDeviceCountsMatchHostOffsets) {
  std::mt19937_64 rng(17);
  const std::vector<int64_t> counts = {0, 3, 70, 0, 1, 130, 5, 0};
  std::vector<int64_t> offsets = {0};
  for (int64_t c : counts) offsets.push_back(offsets.back() + c);
  const int64_t groups = static_cast<int64_t>(counts.size()), rows = offsets.back();
  const int64_t n = 200, k = 136;
  for (int64_t pad : {0, 3}) {
    SCOPED_TRACE(::testing::Message() << "lda pad " << pad);
    const Matrices a = RandomMatrices(rows, k, pad, 1, DType::kBF16, rng);
    const Matrices b = RandomMatrices(n, k, 0, groups, DType::kBF16, rng);
    DeviceBuffer da(Encode(a.values, DType::kBF16)), db(Encode(b.values, DType::kBF16));
    std::unique_ptr<CudaPackedWeights> packed = Pack(b, /*trans_b=*/true, db.get(), k, n);
    std::vector<uint8_t> counts_bytes(counts.size() * sizeof(int64_t));
    std::memcpy(counts_bytes.data(), counts.data(), counts_bytes.size());
    DeviceBuffer dcounts(counts_bytes);
    auto with_offsets = OutputBuffer(rows * n, DType::kBF16);
    auto with_counts = OutputBuffer(rows * n, DType::kBF16);
    GroupedGemmArgs args;
    GemmArgs& g = args.gemm;
    g.n = n;
    g.k = k;
    g.a = da.get();
    g.a_dtype = g.b_dtype = g.c_dtype = DType::kBF16;
    g.lda = a.ld;
    g.packed_b = packed.get();
    g.c = with_offsets->get();
    g.ldc = n;
    args.num_groups = groups;
    args.offsets = offsets.data();
    ASSERT_TRUE(gemm_->GroupedGemm(args, stream_).ok());
    args.offsets = nullptr;
    args.counts = static_cast<const int64_t*>(dcounts.get());
    g.m = rows;
    g.c = with_counts->get();
    ASSERT_TRUE(gemm_->GroupedGemm(args, stream_).ok());
    const std::vector<uint8_t> want = with_offsets->Download();
    EXPECT_EQ(with_counts->Download(), want);

    // m short of the counts' sum: only the first 60 rows are computed.
    auto clipped = OutputBuffer(rows * n, DType::kBF16);
    g.m = 60;
    g.c = clipped->get();
    ASSERT_TRUE(gemm_->GroupedGemm(args, stream_).ok());
    const std::vector<uint8_t> got = clipped->Download();
    EXPECT_EQ(BlockBytes(got, DType::kBF16, 0, 60, n, n), BlockBytes(want, DType::kBF16, 0, 60, n, n));
    for (size_t i = 60 * n * 2; i < got.size(); ++i) ASSERT_EQ(got[i], kSentinel) << i;
  }
}

// The own segment kernel (segment_gemm.h) against float64 and cuBLASLt: rows around its
// 16-row and 64-row tiles (up to several row tiles per matrix), n and k off its 64-wide tiles,
// plain [n, k] and packed B, bf16 and f32 C with ld padding that must stay untouched.
TEST_F(CublasLtGemmTest, SegmentKernelMatchesReferenceAndCublasLt) {
  auto segment = CublasLtGemm::Create(CublasLtGemm::kDefaultWorkspaceBytes,
                                      CublasLtGemm::kDefaultMaxPlans, /*segment_max_rows=*/256);
  auto lt = CublasLtGemm::Create(CublasLtGemm::kDefaultWorkspaceBytes,
                                 CublasLtGemm::kDefaultMaxPlans, /*segment_max_rows=*/0);
  ASSERT_TRUE(segment.ok() && lt.ok());
  std::mt19937_64 rng(16);
  const std::vector<Shape> shapes = {{1, 2, 8},      {7, 6, 72},      {16, 64, 64},
                                     {17, 200, 776}, {63, 1000, 256}, {64, 130, 2048},
                                     {65, 64, 136},  {130, 66, 64},   {200, 8, 520}};
  for (const Shape& sh : shapes) {
    for (DType ct : {DType::kF32, DType::kBF16}) {
      for (bool packed_b : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "m=" << sh.m << " n=" << sh.n << " k=" << sh.k
                                          << " c=" << DTypeName(ct) << " packed=" << packed_b);
        const Matrices a = RandomMatrices(sh.m, sh.k, 8, 1, DType::kBF16, rng);
        const Matrices b = RandomMatrices(sh.n, sh.k, 0, 1, DType::kBF16, rng);
        DeviceBuffer da(Encode(a.values, DType::kBF16)), db(Encode(b.values, DType::kBF16));
        std::unique_ptr<CudaPackedWeights> packed;
        if (packed_b) packed = Pack(b, /*trans_b=*/true, db.get(), sh.k, sh.n);
        const int64_t ldc = sh.n + 2;
        auto dc = OutputBuffer(sh.m * ldc, ct);
        auto dc_lt = OutputBuffer(sh.m * ldc, ct);
        GemmArgs g;
        g.m = sh.m;
        g.n = sh.n;
        g.k = sh.k;
        g.a = da.get();
        g.a_dtype = DType::kBF16;
        g.lda = a.ld;
        g.b = db.get();
        g.b_dtype = DType::kBF16;
        g.ldb = b.ld;
        g.trans_b = true;
        g.packed_b = packed.get();
        g.c = dc->get();
        g.c_dtype = ct;
        g.ldc = ldc;
        ASSERT_TRUE((*segment)->Gemm(g, stream_).ok());
        g.c = dc_lt->get();
        ASSERT_TRUE((*lt)->Gemm(g, stream_).ok());
        const std::vector<uint8_t> c = dc->Download();
        const std::vector<double> got = Block(c, ct, 0, sh.m, sh.n, ldc);
        EXPECT_LE(MaxRelError(got, Reference(a, false, 0, 0, b, true, 0, sh.m, sh.n, sh.k)),
                  OpTol(ct));
        EXPECT_LE(MaxRelError(got, Block(dc_lt->Download(), ct, 0, sh.m, sh.n, ldc)), OpTol(ct));
        for (int64_t r = 0; r < sh.m; ++r) {
          for (int64_t j = sh.n; j < ldc; ++j) {
            ASSERT_EQ(c[(r * ldc + j) * DTypeSize(ct)], kSentinel) << "row " << r;
          }
        }
      }
    }
  }
}

// The segment kernel's two block tiles give the same bits, segment by segment, and the
// reference: segments around both tiles' heights, n and k off the tiles.
TEST_F(CublasLtGemmTest, SegmentKernelTilesGiveTheSameBits) {
  std::mt19937_64 rng(17);
  const std::vector<int64_t> rows = {1, 17, 64, 127, 128, 200, 300, 0, 65};
  int64_t m = 0;
  for (int64_t r : rows) m += r;
  const int64_t groups = static_cast<int64_t>(rows.size()), n = 264, k = 520, ldc = n + 2;
  const Matrices a = RandomMatrices(m, k, 8, 1, DType::kBF16, rng);
  const Matrices b = RandomMatrices(n, k, 0, groups, DType::kBF16, rng);
  DeviceBuffer da(Encode(a.values, DType::kBF16)), db(Encode(b.values, DType::kBF16));
  for (DType ct : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(ct));
    std::vector<SegmentGemmSegment> segments;
    int64_t first = 0;
    for (int64_t i = 0; i < groups; ++i) {
      segments.push_back({i, first * a.ld, first * ldc, rows[i]});
      first += rows[i];
    }
    std::vector<std::vector<uint8_t>> results;
    for (SegmentGemmTiles tiles : {SegmentGemmTiles::kSmall, SegmentGemmTiles::kLarge}) {
      auto dc = OutputBuffer(m * ldc, ct);
      SegmentGemmShape shape;
      shape.n = n;
      shape.k = k;
      shape.b = db.get();
      shape.ldb = b.ld;
      shape.stride_b = b.stride;
      shape.a = da.get();
      shape.lda = a.ld;
      shape.c = dc->get();
      shape.ldc = ldc;
      shape.c_is_f32 = ct == DType::kF32;
      shape.tiles = tiles;
      ASSERT_EQ(SegmentGemmSplits(n, k), 1);
      ASSERT_TRUE(SegmentGemmSupports(shape, segments));
      ASSERT_TRUE(LaunchSegmentGemm(shape, segments, stream_).ok());
      results.push_back(dc->Download());
    }
    EXPECT_EQ(results[0], results[1]);
    first = 0;
    for (int64_t i = 0; i < groups; ++i) {
      if (rows[i] > 0) {
        EXPECT_LE(MaxRelError(Block(results[1], ct, first * ldc, rows[i], n, ldc),
                              Reference(a, false, 0, first, b, true, i, rows[i], n, k)),
                  OpTol(ct))
            << "segment " << i;
      }
      first += rows[i];
    }
  }
}

// GemmArgs::row_invariant: every row's bits are the same whatever m is (the router and
// shared-expert GEMMs rely on it): bf16 through the segment kernel at every m, f32 through one
// cuBLASLt algorithm for every m. Gate-like, shared-expert-like and one-column shapes, m from
// 1 to past the row-invariant plan's rows.
TEST_F(CublasLtGemmTest, RowInvariantRowsDoNotDependOnM) {
  std::mt19937_64 rng(23);
  const int64_t max_m = 1500;
  const std::vector<int64_t> heights = {1, 7, 64, 65, 257, 1024, max_m};
  // Routers (256 x 7168: DeepSeek-V3), a one-column gate, and odd n and k.
  for (const Shape& shape : {Shape{0, 256, 2048}, Shape{0, 8, 4096}, Shape{0, 1, 520},
                             Shape{0, 1024, 512}, Shape{0, 256, 7168}, Shape{0, 37, 1031}}) {
    for (DType ab : {DType::kF32, DType::kBF16}) {
      const DType ct = DType::kF32;
      SCOPED_TRACE(absl::StrCat("n=", shape.n, " k=", shape.k, " ", DTypeName(ab)));
      const Matrices a = RandomMatrices(max_m, shape.k, 0, 1, ab, rng);
      const Matrices b = RandomMatrices(shape.n, shape.k, 0, 1, ab, rng);
      DeviceBuffer da(Encode(a.values, ab)), db(Encode(b.values, ab));
      std::unique_ptr<CudaPackedWeights> packed = Pack(b, true, db.get(), shape.k, shape.n);
      ASSERT_NE(packed, nullptr);
      std::vector<std::vector<uint8_t>> results;
      for (int64_t m : heights) {
        auto dc = OutputBuffer(m * shape.n, ct);
        GemmArgs g;
        g.m = m;
        g.n = shape.n;
        g.k = shape.k;
        g.a = da.get();
        g.a_dtype = g.b_dtype = ab;
        g.lda = shape.k;
        g.c = dc->get();
        g.c_dtype = ct;
        g.ldc = shape.n;
        g.packed_b = packed.get();
        g.row_invariant = true;
        const absl::Status s = gemm_->Gemm(g, stream_);
        ASSERT_TRUE(s.ok()) << "m=" << m << ": " << s;
        results.push_back(dc->Download());
      }
      const std::vector<uint8_t>& all = results.back();
      for (size_t i = 0; i + 1 < heights.size(); ++i) {
        EXPECT_EQ(0, std::memcmp(results[i].data(), all.data(), results[i].size()))
            << "the first " << heights[i] << " rows differ from the same rows of m=" << max_m;
      }
      EXPECT_LE(MaxRelError(Block(all, ct, 0, 64, shape.n, shape.n),
                            Reference(a, false, 0, 0, b, true, 0, 64, shape.n, shape.k)),
                OpTol(ab));
    }
  }
}

// Packing only moves bits: Unpack returns the source exactly, leaves ld padding alone; storage
// made without a source reads as zeros; Repack replaces one matrix.
TEST_F(CublasLtGemmTest, PackUnpackRepackExact) {
  std::mt19937_64 rng(13);
  for (DType t : {DType::kF32, DType::kBF16}) {
    for (bool trans_b : {false, true}) {
      const int64_t k = 37, n = 70, batch = 3;
      SCOPED_TRACE(::testing::Message() << DTypeName(t) << " trans_b=" << trans_b);
      const Matrices b = RandomMatrices(trans_b ? n : k, trans_b ? k : n, 5, batch, t, rng);
      DeviceBuffer db(Encode(b.values, t));
      std::unique_ptr<CudaPackedWeights> packed = Pack(b, trans_b, db.get(), k, n);
      ASSERT_NE(packed, nullptr);
      EXPECT_GT(packed->bytes(), 0u);
      EXPECT_EQ(packed->ld() * DTypeSize(t) % 16, 0);
      const int64_t size = DTypeSize(t);
      for (int64_t i = 0; i < batch; ++i) {
        auto out = OutputBuffer(b.stride, t);
        ASSERT_TRUE(packed->Unpack(i, out->get(), b.ld, stream_).ok());
        const std::vector<uint8_t> got = out->Download();
        const std::vector<uint8_t> src = Encode(b.values, t);
        for (int64_t r = 0; r < b.rows; ++r) {
          ASSERT_EQ(std::memcmp(got.data() + r * b.ld * size,
                                src.data() + (i * b.stride + r * b.ld) * size, b.cols * size),
                    0)
              << "matrix " << i << " row " << r;
          for (int64_t j = b.cols; j < b.ld; ++j) ASSERT_EQ(got[(r * b.ld + j) * size], kSentinel);
        }
      }

      PackWeightsArgs empty;
      empty.batch = batch;
      empty.k = k;
      empty.n = n;
      empty.dtype = t;
      empty.ldb = b.ld;
      empty.trans_b = trans_b;
      auto zeros = CudaPackedWeights::Create(nullptr, empty, stream_);
      ASSERT_TRUE(zeros.ok());
      auto out = OutputBuffer(b.stride, t);
      ASSERT_TRUE((*zeros)->Unpack(1, out->get(), b.ld, stream_).ok());
      EXPECT_THAT(Block(out->Download(), t, 0, b.rows, b.cols, b.ld), ::testing::Each(0.0));
      // Repack matrix 1 with matrix 2 of the source.
      ASSERT_TRUE((*zeros)->Pack(1, static_cast<const char*>(db.get()) + 2 * b.stride * size,
                                 b.ld, stream_)
                      .ok());
      ASSERT_TRUE((*zeros)->Unpack(1, out->get(), b.ld, stream_).ok());
      const std::vector<uint8_t> src = Encode(b.values, t);
      const std::vector<uint8_t> want(src.begin() + 2 * b.stride * size,
                                      src.begin() + 3 * b.stride * size);
      EXPECT_EQ(BlockBytes(out->Download(), t, 0, b.rows, b.cols, b.ld),
                BlockBytes(want, t, 0, b.rows, b.cols, b.ld));
    }
  }
}

// Same inputs, same bits: repeated calls, and a fresh instance (the heuristic's pick is a
// function of the shape). Shapes include small-m / long-k ones where split-K is likely.
TEST_F(CublasLtGemmTest, SameBitsEveryRun) {
  std::mt19937_64 rng(14);
  const std::vector<Shape> shapes = {{8, 256, 8192}, {1, 2048, 4096}, {128, 1024, 4096},
                                     {3, 64, 16384}};
  for (DType ab : {DType::kF32, DType::kBF16}) {
    for (const Shape& sh : shapes) {
      SCOPED_TRACE(::testing::Message()
                   << DTypeName(ab) << " m=" << sh.m << " n=" << sh.n << " k=" << sh.k);
      const Matrices a = RandomMatrices(sh.m, sh.k, 0, 1, ab, rng);
      const Matrices b = RandomMatrices(sh.k, sh.n, 0, 1, ab, rng);
      DeviceBuffer da(Encode(a.values, ab)), db(Encode(b.values, ab));
      auto dc = OutputBuffer(sh.m * sh.n, DType::kF32);
      GemmArgs g;
      g.m = sh.m;
      g.n = sh.n;
      g.k = sh.k;
      g.a = da.get();
      g.a_dtype = ab;
      g.lda = sh.k;
      g.b = db.get();
      g.b_dtype = ab;
      g.ldb = sh.n;
      g.c = dc->get();
      g.c_dtype = DType::kF32;
      g.ldc = sh.n;
      ASSERT_TRUE(gemm_->Gemm(g, stream_).ok());
      const std::vector<uint8_t> first = dc->Download();
      EXPECT_LE(MaxRelError(Block(first, DType::kF32, 0, sh.m, sh.n, sh.n),
                            Reference(a, false, 0, 0, b, false, 0, sh.m, sh.n, sh.k)),
                OpTol(DType::kF32));
      for (int run = 0; run < 2; ++run) {
        ASSERT_TRUE(gemm_->Gemm(g, stream_).ok());
        EXPECT_EQ(dc->Download(), first) << "run " << run;
      }
      auto fresh = CublasLtGemm::Create();
      ASSERT_TRUE(fresh.ok());
      ASSERT_TRUE((*fresh)->Gemm(g, stream_).ok());
      EXPECT_EQ(dc->Download(), first) << "fresh instance";
    }
  }
}

// The plan cache stays within its bound, and a plan rebuilt after eviction gives the same bits.
TEST_F(CublasLtGemmTest, PlanCacheIsBounded) {
  auto small = CublasLtGemm::Create(CublasLtGemm::kDefaultWorkspaceBytes, 4);
  ASSERT_TRUE(small.ok());
  std::mt19937_64 rng(15);
  const int64_t n = 64, k = 128, max_m = 12;
  const Matrices a = RandomMatrices(max_m, k, 0, 1, DType::kBF16, rng);
  const Matrices b = RandomMatrices(k, n, 0, 1, DType::kBF16, rng);
  DeviceBuffer da(Encode(a.values, DType::kBF16)), db(Encode(b.values, DType::kBF16));
  auto dc = OutputBuffer(max_m * n, DType::kBF16);
  GemmArgs g;
  g.n = n;
  g.k = k;
  g.a = da.get();
  g.a_dtype = DType::kBF16;
  g.lda = k;
  g.b = db.get();
  g.b_dtype = DType::kBF16;
  g.ldb = n;
  g.c = dc->get();
  g.c_dtype = DType::kBF16;
  g.ldc = n;
  g.m = 1;
  ASSERT_TRUE((*small)->Gemm(g, stream_).ok());
  const std::vector<uint8_t> first = dc->Download();
  for (int64_t m = 2; m <= max_m; ++m) {
    g.m = m;
    ASSERT_TRUE((*small)->Gemm(g, stream_).ok());
    EXPECT_LE((*small)->cached_plans(), 4u);
  }
  g.m = 1;
  ASSERT_TRUE((*small)->Gemm(g, stream_).ok());
  EXPECT_EQ(BlockBytes(dc->Download(), DType::kBF16, 0, 1, n, n),
            BlockBytes(first, DType::kBF16, 0, 1, n, n));
}

// The pinned algorithms of the MoE expert GEMMs (bf16, packed [n, k] weights), printed for
// the record: per-matrix plans and the batched call over all experts.
TEST_F(CublasLtGemmTest, DescribesExpertPlans) {
  struct Expert {
    const char* model;
    int64_t experts, d, inter;
  };
  for (const Expert& e : {Expert{"mixtral", 8, 4096, 14336}, Expert{"qwen3-30b-a3b", 128, 2048, 768},
                          Expert{"deepseek-v3", 256, 7168, 2048}}) {
    for (int64_t rows : {1, 16, 256}) {
      for (bool up : {true, false}) {
        GemmPlanKey key;
        key.ab_dtype = DType::kBF16;
        key.c_dtype = DType::kBF16;
        key.b_is_nk = true;
        key.m = rows;
        key.k = up ? e.d : e.inter;
        key.n = up ? 2 * e.inter : e.d;
        key.lda = key.k;
        key.ldb = key.k;
        key.ldc = key.n;
        absl::StatusOr<std::string> one = gemm_->DescribePlan(key);
        ASSERT_TRUE(one.ok()) << one.status();
        key.batch = e.experts;
        key.stride_a = rows * key.k;
        key.stride_b = key.n * key.k;
        key.stride_c = rows * key.n;
        absl::StatusOr<std::string> batched = gemm_->DescribePlan(key);
        ASSERT_TRUE(batched.ok()) << batched.status();
        std::cout << e.model << (up ? " w13" : " w2 ") << " rows/expert=" << rows << ": "
                  << *one << " | batched x" << e.experts << ": " << *batched << "\n";
      }
    }
  }
}

TEST(CublasLtStatusTest, NamesCallShapeAndCode) {
  EXPECT_TRUE(CublasLtStatus(CUBLAS_STATUS_SUCCESS, "x", "y", "f.cc", 1).ok());
  const absl::Status s =
      CublasLtStatus(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "gemm (cuda) m=3", "f.cc", 7);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("cublasLtMatmul failed for gemm (cuda) m=3: CUBLAS_STATUS_NOT_SUPPORTED"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("at f.cc:7"));
  EXPECT_EQ(CublasLtStatus(CUBLAS_STATUS_ALLOC_FAILED, "c", "w", "f", 1).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CublasLtStatus(CUBLAS_STATUS_INVALID_VALUE, "c", "w", "f", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CublasLtStatus(CUBLAS_STATUS_NOT_INITIALIZED, "c", "w", "f", 1).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(CublasLtStatus(CUBLAS_STATUS_EXECUTION_FAILED, "c", "w", "f", 1).code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace moe::cuda
