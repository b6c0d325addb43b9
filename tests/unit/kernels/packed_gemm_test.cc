// GEMMs with a pre-packed B (Backend::PackWeights) on the CPU backend: against a float64
// reference and the plain-B path, batch invariance and determinism, RepackWeights refreshing
// one matrix, UnpackWeights giving back exactly what was packed, and the validation of all
// three at the exact limits.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm_tiles.h"
#include "kernels/cpu/onednn_matmul_cache.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/kernels/gemm_test_util.h"

namespace moe::testing {
namespace {

class PackedGemmTest : public GemmBackendsTest {};

TEST_P(PackedGemmTest, PackedMatchesFloat64OnOddAndRoundSizes) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  // Heights past one tile, widths with and without a last narrower tile, every transpose and
  // padded leading dims (a padded or transposed A is copied dense for oneDNN's brgemm).
  for (int64_t m : {1, 3, 17, 257}) {
    for (int64_t k : {1, 7, 129}) {
      for (int64_t n : {5, 33, 513}) {
        for (int t = 0; t < 4; ++t) {
          for (int64_t pad : {0, 3}) {
            CheckGemm(two_, GetParam(), m, n, k, t & 1, t & 2, pad, rng, /*packed=*/true);
          }
        }
      }
    }
  }
}

TEST_P(PackedGemmTest, PackedLargeKMatchesFloat64) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  CheckGemm(two_, GetParam(), 8, 600, 4096, false, false, 0, rng, true);
  CheckGemm(two_, GetParam(), 2, 40, 3000, false, true, 5, rng, true);
}

TEST_P(PackedGemmTest, PackedZeroKWritesZeros) {
  const DtypeCase dt = GetParam();
  PackWeightsArgs pack;
  pack.batch = 2;
  pack.k = 0;
  pack.n = 4;
  pack.dtype = dt.ab;
  pack.ldb = 4;
  absl::StatusOr<std::unique_ptr<PackedWeights>> packed = two_.PackWeights(pack);
  ASSERT_TRUE(packed.ok()) << packed.status();
  const std::vector<uint8_t> dummy(64, 0);
  std::vector<uint8_t> c(3 * 6 * DTypeSize(dt.c), kSentinel);
  GemmArgs g;
  g.m = 3;
  g.n = 4;
  g.a = dummy.data();
  g.a_dtype = g.b_dtype = dt.ab;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = 6;
  UsePacked(packed->get(), 1, &g);
  ASSERT_TRUE(two_.Gemm(g).ok());
  EXPECT_EQ(ReadBlock(c, dt.c, 0, 3, 4, 6), std::vector<double>(12, 0.0));
  std::vector<bool> written(c.size(), false);
  MarkBlock(&written, dt.c, 0, 3, 4, 6);
  ExpectOnlyBlocksWritten(c, written);
}

TEST_P(PackedGemmTest, PackedBitsIndependentOfThreadsAndRuns) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  uint64_t case_seed = seed;
  for (auto [m, n, k, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {8, 64, 4096, 0}, {1, 1024, 4096, 1}, {3, 33, 16384, 0}, {300, 700, 129, 2}}) {
    SCOPED_TRACE(absl::StrCat("m=", m, " n=", n, " k=", k, " pad=", pad));
    ++case_seed;
    auto run = [&](Backend& backend) {
      std::mt19937_64 rng(case_seed);
      return CheckGemm(backend, dt, m, n, k, false, false, pad, rng, /*packed=*/true);
    };
    const std::vector<uint8_t> c1 = run(one_);
    EXPECT_EQ(c1, run(two_));
    EXPECT_EQ(c1, run(three_));
    EXPECT_EQ(c1, run(two_));
  }
}

// Batch invariance of the packed path: a row's bits do not depend on how many rows share its
// tile, from 1 to a full tile, nor on where the tile starts.
TEST_P(PackedGemmTest, PackedRowBitsIndependentOfTileHeight) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const int64_t rows = 300, k = 129, n = 600;  // a full tile of columns and a narrower one
  const HostMatrix a = RandomMatrix(rows, k, k, dt.ab, rng);
  const HostMatrix b = RandomMatrix(k, n, n, dt.ab, rng);
  const std::unique_ptr<PackedWeights> packed = Pack(two_, b, 1, k, n, false, 0);
  ASSERT_NE(packed, nullptr);
  const int64_t c_size = DTypeSize(dt.c);
  auto run = [&](int64_t row0, int64_t m) {
    std::vector<uint8_t> c(m * n * c_size);
    GemmArgs g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a.bytes.data() + row0 * k * DTypeSize(dt.ab);
    g.a_dtype = g.b_dtype = dt.ab;
    g.lda = k;
    g.c = c.data();
    g.c_dtype = dt.c;
    g.ldc = n;
    UsePacked(packed.get(), 0, &g);
    const absl::Status s = two_.Gemm(g);
    EXPECT_TRUE(s.ok()) << s;
    return c;
  };
  const std::vector<uint8_t> all = run(0, rows);
  int64_t heights_differing = 0;
  for (int64_t m = 1; m <= 256; ++m) {
    const int64_t row0 = (m * 37) % (rows - m + 1);
    const std::vector<uint8_t> part = run(row0, m);
    heights_differing += !std::equal(part.begin(), part.end(), all.begin() + row0 * n * c_size);
  }
  EXPECT_EQ(heights_differing, 0);
}

// oneDNN reads a packed B through another kernel (brgemm) than a plain one (gemm:jit); both
// accumulate in fp32 but block K differently, so their last bits differ. This pins what can be
// promised: a single product (k = 1) is exact in both, and otherwise both stay within the op
// tolerance of each other. The count of differing elements is recorded in the test XML.
TEST_P(PackedGemmTest, PackedAgreesWithPlainB) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (auto [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {5, 600, 1}, {8, 600, 1}, {8, 600, 4096}, {64, 1100, 129}}) {
    SCOPED_TRACE(absl::StrCat("m=", m, " n=", n, " k=", k));
    std::mt19937_64 rng(seed + k);
    const std::vector<uint8_t> plain = CheckGemm(two_, dt, m, n, k, false, false, 0, rng);
    rng.seed(seed + k);
    const std::vector<uint8_t> packed = CheckGemm(two_, dt, m, n, k, false, false, 0, rng, true);
    const std::vector<double> p = Decode(plain.data(), m * n, dt.c);
    const std::vector<double> q = Decode(packed.data(), m * n, dt.c);
    int64_t differing = 0;
    for (int64_t i = 0; i < m * n; ++i) differing += p[i] != q[i];
    if (k == 1) {
      EXPECT_EQ(differing, 0);
    } else {
      EXPECT_LE(MaxRelError(q, p), OpTol(dt.c));
    }
    RecordProperty(absl::StrCat("differing_elements_k", k, "_m", m), differing);
  }
}

TEST_P(PackedGemmTest, PackedBatchedMatchesFloat64) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (const BatchedCase& bc :
       std::vector<BatchedCase>{{1, 3, 5, 7, false, false, 0, false, false},
                                {4, 17, 33, 129, false, false, 0, false, false},
                                {3, 17, 33, 129, true, false, 3, false, false},
                                {3, 17, 600, 129, false, true, 3, false, false},
                                {5, 1, 256, 129, false, false, 0, false, false},
                                {3, 300, 600, 40, false, false, 2, false, false},
                                {4, 17, 33, 129, false, false, 0, false, true},
                                {4, 17, 33, 129, true, false, 2, true, false}}) {
    CheckBatched(two_, GetParam(), bc, seed, /*packed=*/true);
  }
}

TEST_P(PackedGemmTest, PackedGroupedMatchesFloat64WithEmptyGroups) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  const DtypeCase dt = GetParam();
  CheckGrouped(two_, dt, {0, 0, 5, 0, 17, 1, 0, 3, 0}, 33, 129, false, 0, false, seed, true);
  CheckGrouped(two_, dt, {0, 5, 0, 17, 1, 0, 3, 0, 0}, 600, 129, true, 3, false, seed, true);
  CheckGrouped(two_, dt, {300, 0, 2}, 600, 40, false, 0, false, seed, true);
  CheckGrouped(two_, dt, {4, 0, 9, 2}, 33, 129, false, 2, true, seed, true);
  CheckGrouped(two_, dt, {0, 0, 0}, 33, 129, false, 0, false, seed, true);
}

// The expert GEMMs with packed weights: gemm per matrix, one batched GEMM, and a grouped GEMM
// with equal counts give the same bits, on any thread count.
TEST_P(PackedGemmTest, PackedGemmBatchedAndGroupedAreBitIdentical) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (auto [experts, rows, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {4, 37, 129, 600}, {8, 64, 256, 192}, {3, 1, 64, 33}, {2, 300, 48, 520}}) {
    SCOPED_TRACE(absl::StrCat("E=", experts, " C=", rows, " k=", k, " n=", n));
    const GroupedRun grouped = CheckGrouped(two_, dt, std::vector<int64_t>(experts, rows), n, k,
                                            false, 0, false, seed, /*packed=*/true);
    const std::unique_ptr<PackedWeights> packed =
        Pack(one_, grouped.b, experts, k, n, false, k * grouped.b.ld);
    ASSERT_NE(packed, nullptr);
    BatchedGemmArgs args;
    GemmArgs& g = args.gemm;
    g.m = rows;
    g.n = n;
    g.k = k;
    g.a = grouped.a.bytes.data();
    g.a_dtype = g.b_dtype = dt.ab;
    g.lda = grouped.a.ld;
    g.c_dtype = dt.c;
    g.ldc = n;
    UsePacked(packed.get(), 0, &g);
    args.batch = experts;
    args.stride_a = rows * grouped.a.ld;
    args.stride_c = rows * n;
    std::vector<uint8_t> batched(grouped.c.size(), kSentinel);
    g.c = batched.data();
    ASSERT_TRUE(one_.BatchedGemm(args).ok());
    EXPECT_EQ(batched, grouped.c);
    const std::unique_ptr<PackedWeights> packed3 =
        Pack(three_, grouped.b, experts, k, n, false, k * grouped.b.ld);
    ASSERT_NE(packed3, nullptr);
    std::vector<uint8_t> single(grouped.c.size(), kSentinel);
    for (int64_t e = 0; e < experts; ++e) {
      GemmArgs one = g;
      one.packed_b = packed3.get();
      one.a = grouped.a.bytes.data() + e * args.stride_a * DTypeSize(dt.ab);
      one.c = single.data() + e * args.stride_c * DTypeSize(dt.c);
      one.packed_b_index = e;
      ASSERT_TRUE(three_.Gemm(one).ok());
    }
    EXPECT_EQ(single, grouped.c);
  }
}

// The packed copy does not read its source after packing; RepackWeights refreshes exactly one
// matrix, from a source with another leading dim, to the bits of a fresh pack.
TEST_P(PackedGemmTest, RepackRefreshesOneMatrix) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const int64_t batch = 3, m = 9, k = 129, n = 600;
  HostMatrix b = RandomMatrix(batch * k, n, n, dt.ab, rng);
  const HostMatrix a = RandomMatrix(batch * m, k, k, dt.ab, rng);
  const std::unique_ptr<PackedWeights> packed = Pack(two_, b, batch, k, n, false, k * n);
  ASSERT_NE(packed, nullptr);
  auto run = [&](const PackedWeights* p) {
    std::vector<uint8_t> c(batch * m * n * DTypeSize(dt.c));
    BatchedGemmArgs args;
    args.gemm.m = m;
    args.gemm.n = n;
    args.gemm.k = k;
    args.gemm.a = a.bytes.data();
    args.gemm.a_dtype = args.gemm.b_dtype = dt.ab;
    args.gemm.lda = k;
    args.gemm.c = c.data();
    args.gemm.c_dtype = dt.c;
    args.gemm.ldc = n;
    UsePacked(p, 0, &args.gemm);
    args.batch = batch;
    args.stride_a = m * k;
    args.stride_c = m * n;
    const absl::Status s = two_.BatchedGemm(args);
    EXPECT_TRUE(s.ok()) << s;
    return c;
  };
  const std::vector<uint8_t> before = run(packed.get());
  std::fill(b.bytes.begin(), b.bytes.end(), 0xFF);  // NaNs: the source is no longer read
  EXPECT_EQ(run(packed.get()), before);

  // New weights for matrix 1, stored with a wider leading dim.
  const HostMatrix fresh = RandomMatrix(k, n, n + 7, dt.ab, rng);
  ASSERT_TRUE(two_.RepackWeights(packed.get(), 1, fresh.bytes.data(), fresh.ld).ok());
  const std::vector<uint8_t> after = run(packed.get());
  const int64_t matrix_bytes = m * n * DTypeSize(dt.c);
  EXPECT_TRUE(std::equal(after.begin(), after.begin() + matrix_bytes, before.begin()));
  EXPECT_TRUE(
      std::equal(after.begin() + 2 * matrix_bytes, after.end(), before.begin() + 2 * matrix_bytes));
  const std::vector<double> want = Reference(a, false, m * k, fresh, false, 0, m, n, k);
  EXPECT_LE(MaxRelError(ReadBlock(after, dt.c, m * n, m, n, n), want), OpTol(dt.c));
  // Bit-identical to a fresh pack of the new weights.
  const std::unique_ptr<PackedWeights> repacked = Pack(two_, fresh, batch, k, n, false, 0);
  ASSERT_NE(repacked, nullptr);
  const std::vector<uint8_t> fresh_run = run(repacked.get());
  EXPECT_TRUE(std::equal(after.begin() + matrix_bytes, after.begin() + 2 * matrix_bytes,
                         fresh_run.begin() + matrix_bytes));
}
// UnpackWeights writes back exactly what was packed: bitwise, for odd shapes, both source
// layouts, padded leading dims (the padding is not written), one full tile, tile tails of 1
// and wider, and matrices past the first of a batch.
TEST(UnpackTest, UnpackOfPackIsBitwiseTheSource) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  CpuBackend backend(CpuBackendOptions{2});
  const int64_t batch = 3;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const int64_t size = DTypeSize(dtype);
    for (auto [k, n] : std::vector<std::tuple<int64_t, int64_t>>{{1, 1},
                                                                 {7, 5},
                                                                 {129, 33},
                                                                 {3, kGemmTileN},
                                                                 {65, kGemmTileN + 1},
                                                                 {17, 2 * kGemmTileN + 76},
                                                                 {300, 1100}}) {
      for (bool trans_b : {false, true}) {
        for (int64_t pad : {0, 3}) {
          SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " k=", k, " n=", n, " trans_b=", trans_b,
                                    " pad=", pad));
          const int64_t rows = trans_b ? n : k, cols = trans_b ? k : n, ld = cols + pad;
          const HostMatrix b = RandomMatrix(batch * rows, cols, ld, dtype, rng);
          const std::unique_ptr<PackedWeights> packed =
              Pack(backend, b, batch, k, n, trans_b, rows * ld);
          ASSERT_NE(packed, nullptr);
          // Unpacked into another leading dim than the source's, too.
          for (int64_t out_ld : {cols, cols + 5}) {
            for (int64_t index = 0; index < batch; ++index) {
              std::vector<uint8_t> out(rows * out_ld * size, kSentinel);
              const absl::Status s = backend.UnpackWeights(*packed, index, out.data(), out_ld);
              ASSERT_TRUE(s.ok()) << s;
              int64_t differing = 0, padding_written = 0;
              for (int64_t r = 0; r < rows; ++r) {
                const uint8_t* want = b.bytes.data() + ((index * rows + r) * ld) * size;
                const uint8_t* got = out.data() + r * out_ld * size;
                differing += std::memcmp(want, got, cols * size) != 0;
                for (int64_t i = cols * size; i < out_ld * size; ++i) {
                  padding_written += got[i] != kSentinel;
                }
              }
              EXPECT_EQ(differing, 0) << "rows differing, matrix " << index << " ld " << out_ld;
              EXPECT_EQ(padding_written, 0) << "matrix " << index << " ld " << out_ld;
            }
          }
        }
      }
    }
  }
}

// Packing moves bits without arithmetic: signed zeros, subnormals, infinities and the largest
// finite values come back as they went in, and so do the bits of a repacked matrix.
TEST(UnpackTest, SpecialValuesAndRepackSurviveTheRoundTrip) {
  CpuBackend backend(CpuBackendOptions{2});
  const int64_t k = 33, n = kGemmTileN + 7;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const int64_t size = DTypeSize(dtype);
    // f32: -0, the smallest subnormal, a large subnormal, +inf, -inf, the largest finite;
    // bf16 likewise (its upper 16 bits).
    const std::vector<uint32_t> specials = {0x80000000u, 0x00000001u, 0x007FFFFFu,
                                            0x7F800000u, 0xFF800000u, 0x7F7FFFFFu};
    std::vector<uint8_t> src(k * n * size);
    std::mt19937_64 rng(TestSeed());
    for (int64_t i = 0; i < k * n; ++i) {
      uint32_t bits = static_cast<size_t>(i % 7) < specials.size() ? specials[i % 7]
                                                                   : static_cast<uint32_t>(rng());
      if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) bits = 0;  // no NaN
      if (dtype == DType::kF32) {
        std::memcpy(src.data() + i * 4, &bits, 4);
      } else {
        uint16_t half = static_cast<uint16_t>(bits >> 16);
        if ((half & 0x7F80u) == 0x7F80u && (half & 0x007Fu) != 0) half = 0;
        std::memcpy(src.data() + i * 2, &half, 2);
      }
    }
    PackWeightsArgs args;
    args.batch = 2;
    args.k = k;
    args.n = n;
    args.b = src.data();
    args.dtype = dtype;
    args.ldb = n;
    absl::StatusOr<std::unique_ptr<PackedWeights>> packed = backend.PackWeights(args);
    ASSERT_TRUE(packed.ok()) << packed.status();
    std::vector<uint8_t> out(src.size());
    for (int64_t index : {0, 1}) {
      ASSERT_TRUE(backend.UnpackWeights(**packed, index, out.data(), n).ok());
      EXPECT_EQ(out, src) << "matrix " << index;
    }
    // Matrix 1 repacked from the reversed values; matrix 0 keeps its bits.
    std::vector<uint8_t> reversed(src.size());
    for (int64_t i = 0; i < k * n; ++i) {
      std::memcpy(reversed.data() + i * size, src.data() + (k * n - 1 - i) * size, size);
    }
    ASSERT_TRUE(backend.RepackWeights(packed->get(), 1, reversed.data(), n).ok());
    ASSERT_TRUE(backend.UnpackWeights(**packed, 1, out.data(), n).ok());
    EXPECT_EQ(out, reversed);
    ASSERT_TRUE(backend.UnpackWeights(**packed, 0, out.data(), n).ok());
    EXPECT_EQ(out, src);
  }
}

// The unpacked matrix is a plain B for the same GEMM: plain-B results from it equal plain-B
// results from the original, bit for bit (same kernel, same bits in).
TEST_P(PackedGemmTest, UnpackedMatrixServesAsPlainB) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  const int64_t m = 9, k = 129, n = 600;
  std::mt19937_64 rng(seed);
  const std::vector<uint8_t> want = CheckGemm(two_, dt, m, n, k, false, true, 2, rng);
  rng.seed(seed);
  const HostMatrix a = RandomOperand(m, k, false, 2, dt.ab, rng);
  HostMatrix b = RandomOperand(k, n, true, 2 + 2, dt.ab, rng);
  const std::unique_ptr<PackedWeights> packed = Pack(two_, b, 1, k, n, true, 0);
  ASSERT_NE(packed, nullptr);
  std::fill(b.bytes.begin(), b.bytes.end(), 0xFF);
  ASSERT_TRUE(two_.UnpackWeights(*packed, 0, b.bytes.data(), b.ld).ok());
  std::vector<uint8_t> c(want.size(), kSentinel);
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a.bytes.data();
  g.a_dtype = g.b_dtype = dt.ab;
  g.lda = a.ld;
  g.b = b.bytes.data();
  g.ldb = b.ld;
  g.trans_b = true;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = n + 2 * 2;
  ASSERT_TRUE(two_.Gemm(g).ok());
  // The ld padding of B was 0xFF (NaN) and stays so: only C's block is compared.
  EXPECT_EQ(ReadBlock(c, dt.c, 0, m, n, g.ldc), ReadBlock(want, dt.c, 0, m, n, g.ldc));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PackedGemmTest, ::testing::ValuesIn(kDtypeCases), CaseName);

// ---------------------------------------------------------------------------------------------
// Validation of packed weights, at the exact limits.

void ExpectInvalid(const absl::Status& s, absl::string_view message) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), message)) << "'" << message << "' missing in: " << s;
}

class PackedValidationTest : public ::testing::Test {
 protected:
  // f32 source big enough for every call here.
  PackWeightsArgs Args(int64_t batch, int64_t k, int64_t n) {
    PackWeightsArgs p;
    p.batch = batch;
    p.k = k;
    p.n = n;
    p.b = b_.data();
    p.ldb = n;
    p.stride_b = k * n;
    return p;
  }
  std::unique_ptr<PackedWeights> Packed(int64_t batch, int64_t k, int64_t n) {
    absl::StatusOr<std::unique_ptr<PackedWeights>> p = backend_.PackWeights(Args(batch, k, n));
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }
  GemmArgs Gemm(const PackedWeights* packed, int64_t m, int64_t k, int64_t n) {
    GemmArgs g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a_.data();
    g.lda = k;
    g.c = c_.data();
    g.ldc = n;
    g.packed_b = packed;
    return g;
  }

  CpuBackend backend_{CpuBackendOptions{2}};
  std::vector<float> a_ = std::vector<float>(4096, 1.0f);
  std::vector<float> b_ = std::vector<float>(4096, 1.0f);
  std::vector<float> c_ = std::vector<float>(4096, 0.0f);
};

TEST_F(PackedValidationTest, PackWeightsArguments) {
  for (const char* field : {"batch", "k", "n"}) {
    PackWeightsArgs p = Args(2, 4, 8);
    (field[0] == 'b' ? p.batch : field[0] == 'k' ? p.k : p.n) = -1;
    ExpectInvalid(backend_.PackWeights(p).status(),
                  absl::StrCat("pack_weights: ", field, "=-1 is negative"));
  }
  PackWeightsArgs p = Args(2, 4, 8);
  p.dtype = DType::kF16;
  EXPECT_EQ(backend_.PackWeights(p).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(absl::StrContains(backend_.PackWeights(p).status().message(),
                                "pack_weights: dtype=f16 (supported: f32, bf16)"));
  // ldb: the row length is n, or k for a transposed source.
  p = Args(2, 4, 8);
  p.ldb = 7;
  ExpectInvalid(backend_.PackWeights(p).status(), "ldb=7 is less than the row length 8");
  p.ldb = 8;
  EXPECT_TRUE(backend_.PackWeights(p).ok());
  p.trans_b = true;
  p.ldb = 3;
  ExpectInvalid(backend_.PackWeights(p).status(), "ldb=3 is less than the row length 4");
  p.ldb = 4;
  EXPECT_TRUE(backend_.PackWeights(p).ok());
  // stride_b: 0 or at least one matrix (4 rows of ldb 8: 32 elements).
  p = Args(2, 4, 8);
  p.stride_b = 31;
  ExpectInvalid(backend_.PackWeights(p).status(),
                "stride_b=31 is neither 0 nor at least one matrix (32 elements)");
  p.stride_b = 32;
  EXPECT_TRUE(backend_.PackWeights(p).ok());
  p.stride_b = 0;
  EXPECT_TRUE(backend_.PackWeights(p).ok());
  // No source: storage only, zero matrices until repacked (stride not checked then).
  p.b = nullptr;
  p.stride_b = 5;
  absl::StatusOr<std::unique_ptr<PackedWeights>> empty = backend_.PackWeights(p);
  ASSERT_TRUE(empty.ok()) << empty.status();
  std::vector<float> back(4 * 8, 1.0f);
  ASSERT_TRUE(backend_.UnpackWeights(**empty, 1, back.data(), 8).ok());
  for (float v : back) EXPECT_EQ(v, 0.0f);
  p.stride_b = 0;
  // Nothing to pack: no pointer needed.
  p.batch = 0;
  EXPECT_TRUE(backend_.PackWeights(p).ok());
}

TEST_F(PackedValidationTest, GemmShapesMustMatchThePack) {
  const std::unique_ptr<PackedWeights> packed = Packed(3, 16, 8);
  ASSERT_NE(packed, nullptr);
  EXPECT_EQ(packed->batch(), 3);
  EXPECT_EQ(packed->k(), 16);
  EXPECT_EQ(packed->n(), 8);
  EXPECT_EQ(packed->dtype(), DType::kF32);
  EXPECT_EQ(packed->backend(), &backend_);
  for (int64_t k : {15, 17}) {
    ExpectInvalid(backend_.Gemm(Gemm(packed.get(), 2, k, 8)),
                  absl::StrCat("gemm: k=", k, " differs from packed_b k=16"));
  }
  for (int64_t n : {7, 9}) {
    ExpectInvalid(backend_.Gemm(Gemm(packed.get(), 2, 16, n)),
                  absl::StrCat("gemm: n=", n, " differs from packed_b n=8"));
  }
  GemmArgs g = Gemm(packed.get(), 2, 16, 8);
  g.a_dtype = g.b_dtype = DType::kBF16;
  ExpectInvalid(backend_.Gemm(g), "gemm: b_dtype=bf16 differs from packed_b dtype=f32");
  // Checked even when there is nothing to compute.
  ExpectInvalid(backend_.Gemm(Gemm(packed.get(), 0, 15, 8)), "k=15 differs");
  // b and ldb are ignored.
  g = Gemm(packed.get(), 2, 16, 8);
  EXPECT_TRUE(backend_.Gemm(g).ok());
  EXPECT_EQ(c_[0], 16.0f);
}

TEST_F(PackedValidationTest, MatrixIndexAtTheLimits) {
  const std::unique_ptr<PackedWeights> packed = Packed(3, 16, 8);
  ASSERT_NE(packed, nullptr);
  GemmArgs g = Gemm(packed.get(), 2, 16, 8);
  g.packed_b_index = -1;
  ExpectInvalid(backend_.Gemm(g), "gemm: packed_b_index=-1 is negative");
  g.packed_b_index = 2;
  EXPECT_TRUE(backend_.Gemm(g).ok());
  g.packed_b_index = 3;
  ExpectInvalid(backend_.Gemm(g), "gemm: packed_b_index=3 + 1 matrix exceeds packed_b batch=3");

  // Batched: matrices [index, index + batch).
  BatchedGemmArgs batched;
  batched.gemm = Gemm(packed.get(), 2, 16, 8);
  batched.stride_a = 2 * 16;
  batched.stride_c = 2 * 8;
  batched.batch = 2;
  for (int64_t index : {0, 1}) {
    batched.gemm.packed_b_index = index;
    EXPECT_TRUE(backend_.BatchedGemm(batched).ok()) << index;
  }
  batched.gemm.packed_b_index = 2;
  ExpectInvalid(backend_.BatchedGemm(batched),
                "batched_gemm: packed_b_index=2 + 2 matrices exceeds packed_b batch=3");
  batched.gemm.packed_b_index = 0;
  batched.batch = 3;
  EXPECT_TRUE(backend_.BatchedGemm(batched).ok());
  batched.batch = 4;
  ExpectInvalid(backend_.BatchedGemm(batched), "packed_b_index=0 + 4 matrices exceeds");
  batched.batch = 3;
  batched.stride_b = 1;  // ignored with a packed B
  EXPECT_TRUE(backend_.BatchedGemm(batched).ok());

  // Grouped: one matrix per group, empty groups included.
  const std::vector<int64_t> offsets = {0, 1, 1, 3, 4};
  GroupedGemmArgs grouped;
  grouped.gemm = Gemm(packed.get(), 0, 16, 8);
  grouped.offsets = offsets.data();
  grouped.stride_b = 1;  // ignored with a packed B
  grouped.num_groups = 3;
  EXPECT_TRUE(backend_.GroupedGemm(grouped).ok());
  grouped.num_groups = 4;
  ExpectInvalid(backend_.GroupedGemm(grouped),
                "grouped_gemm: packed_b_index=0 + 4 matrices exceeds packed_b batch=3");
  grouped.num_groups = 2;
  grouped.gemm.packed_b_index = 1;
  EXPECT_TRUE(backend_.GroupedGemm(grouped).ok());
  grouped.gemm.packed_b_index = 2;
  ExpectInvalid(backend_.GroupedGemm(grouped), "packed_b_index=2 + 2 matrices exceeds");
}

TEST_F(PackedValidationTest, ForeignHandlesAreRejected) {
  CpuBackend other(CpuBackendOptions{1});
  absl::StatusOr<std::unique_ptr<PackedWeights>> foreign = other.PackWeights(Args(1, 16, 8));
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  ExpectInvalid(backend_.Gemm(Gemm(foreign->get(), 2, 16, 8)),
                "gemm: packed_b was made by another backend");
  ExpectInvalid(backend_.RepackWeights(foreign->get(), 0, b_.data(), 8),
                "repack_weights: packed was made by another backend");
}

TEST_F(PackedValidationTest, RepackArgumentsAtTheLimits) {
  const std::unique_ptr<PackedWeights> packed = Packed(3, 16, 8);
  ASSERT_NE(packed, nullptr);
  ExpectInvalid(backend_.RepackWeights(nullptr, 0, b_.data(), 8), "repack_weights: packed is null");
  ExpectInvalid(backend_.RepackWeights(packed.get(), -1, b_.data(), 8),
                "repack_weights: index=-1 is outside [0, batch=3)");
  ExpectInvalid(backend_.RepackWeights(packed.get(), 3, b_.data(), 8),
                "repack_weights: index=3 is outside [0, batch=3)");
  EXPECT_TRUE(backend_.RepackWeights(packed.get(), 2, b_.data(), 8).ok());
  ExpectInvalid(backend_.RepackWeights(packed.get(), 0, b_.data(), 7),
                "repack_weights: ldb=7 is less than the row length 8");
  ExpectInvalid(backend_.RepackWeights(packed.get(), 0, nullptr, 8), "repack_weights: b is null");
  EXPECT_TRUE(backend_.RepackWeights(packed.get(), 0, b_.data(), 9).ok());
}

TEST_F(PackedValidationTest, UnpackArgumentsAtTheLimits) {
  const std::unique_ptr<PackedWeights> packed = Packed(3, 16, 8);
  ASSERT_NE(packed, nullptr);
  std::vector<float> out(16 * 9, -1.0f);
  const std::vector<float> untouched = out;
  ExpectInvalid(backend_.UnpackWeights(*packed, -1, out.data(), 8),
                "unpack_weights: index=-1 is outside [0, batch=3)");
  ExpectInvalid(backend_.UnpackWeights(*packed, 3, out.data(), 8),
                "unpack_weights: index=3 is outside [0, batch=3)");
  ExpectInvalid(backend_.UnpackWeights(*packed, 0, out.data(), 7),
                "unpack_weights: ldb=7 is less than the row length 8");
  ExpectInvalid(backend_.UnpackWeights(*packed, 0, nullptr, 8), "unpack_weights: b is null");
  EXPECT_EQ(out, untouched);  // nothing written by a refused call
  EXPECT_TRUE(backend_.UnpackWeights(*packed, 2, out.data(), 8).ok());
  EXPECT_EQ(out[8], 1.0f);  // row 1 with ldb 8
  out = untouched;
  EXPECT_TRUE(backend_.UnpackWeights(*packed, 0, out.data(), 9).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[8], -1.0f);  // ld padding

  // A transposed source: the row length is k.
  PackWeightsArgs t = Args(1, 16, 8);
  t.trans_b = true;
  t.ldb = 16;
  absl::StatusOr<std::unique_ptr<PackedWeights>> transposed = backend_.PackWeights(t);
  ASSERT_TRUE(transposed.ok()) << transposed.status();
  ExpectInvalid(backend_.UnpackWeights(**transposed, 0, out.data(), 15),
                "unpack_weights: ldb=15 is less than the row length 16");
  EXPECT_TRUE(backend_.UnpackWeights(**transposed, 0, out.data(), 16).ok());

  // Nothing to write: no pointer needed, but the index and ldb are still checked.
  PackWeightsArgs e = Args(2, 0, 8);
  absl::StatusOr<std::unique_ptr<PackedWeights>> empty = backend_.PackWeights(e);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(backend_.UnpackWeights(**empty, 1, nullptr, 8).ok());
  ExpectInvalid(backend_.UnpackWeights(**empty, 2, nullptr, 8),
                "unpack_weights: index=2 is outside [0, batch=2)");
  ExpectInvalid(backend_.UnpackWeights(**empty, 0, nullptr, 7),
                "unpack_weights: ldb=7 is less than the row length 8");
}

TEST_F(PackedValidationTest, UnpackRejectsForeignHandles) {
  CpuBackend other(CpuBackendOptions{1});
  absl::StatusOr<std::unique_ptr<PackedWeights>> foreign = other.PackWeights(Args(1, 16, 8));
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  ExpectInvalid(backend_.UnpackWeights(**foreign, 0, c_.data(), 8),
                "unpack_weights: packed was made by another backend");
}

// bytes() covers every matrix (layout padding may add more) and is 0 for an empty set.
TEST_F(PackedValidationTest, BytesCoverEveryMatrix) {
  for (auto [batch, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {3, 16, 8}, {1, 7, 5}, {2, 33, kGemmTileN + 1}}) {
    SCOPED_TRACE(absl::StrCat("batch=", batch, " k=", k, " n=", n));
    std::vector<float> b(batch * k * n, 1.0f);
    PackWeightsArgs p = Args(batch, k, n);
    p.b = b.data();
    absl::StatusOr<std::unique_ptr<PackedWeights>> packed = backend_.PackWeights(p);
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_GE((*packed)->bytes(), static_cast<size_t>(batch * k * n) * sizeof(float));
  }
  for (auto [batch, k, n] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{0, 16, 8}, {3, 0, 8}, {3, 16, 0}}) {
    absl::StatusOr<std::unique_ptr<PackedWeights>> packed = backend_.PackWeights(Args(batch, k, n));
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_EQ((*packed)->bytes(), 0u);
  }
}

// A packed key gets oneDNN's own choice, which on AVX-512 is brgemm with a blocked B layout
// (the point of packing); elsewhere it may be gemm:jit with a plain one, which still works.
TEST(OneDnnMatmulCacheTest, PackedKeyReadsOneDnnsPreferredLayout) {
  OneDnnMatmulCache cache(1);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    MatmulKey key;
    key.dtype = dtype;
    key.packed_b = true;
    key.m = 3;
    key.n = 512;
    key.k = 4096;
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> p = cache.Get(key);
    ASSERT_TRUE(p.ok()) << p.status();
    const dnnl::memory::desc plain(
        {4096, 512},
        dtype == DType::kBF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32,
        dnnl::memory::format_tag::ab);
    // ISA values are bit sets of their features (avx2_vnni is numerically larger).
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto avx512 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);
    if ((isa & avx512) == avx512) {
      EXPECT_TRUE(absl::StartsWith((*p)->impl, "brg")) << (*p)->impl;
      EXPECT_TRUE((*p)->weights_md != plain);
    }
    key.m = 200;  // another height reads the same layout
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> q = cache.Get(key);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_TRUE((*q)->weights_md == (*p)->weights_md);
  }
}

}  // namespace
}  // namespace moe::testing
