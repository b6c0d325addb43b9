// GEMM, batched GEMM and grouped GEMM of the CPU backend against a float64 naive reference,
// their determinism (run to run, 1 vs 2 vs 3 threads, grouped vs batched), and the backend's
// basics (Allocate, copies, Describe). DISABLED_Benchmark measures throughput:
//   bazel build //tests/unit/kernels:gemm_test && bazel-bin/tests/unit/kernels/gemm_test
//     --gtest_also_run_disabled_tests --gtest_filter='*Benchmark*'
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/onednn_matmul_cache.h"
#include "kernels/registry.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe {
namespace {

using ::moe::testing::Decode;
using ::moe::testing::Encode;
using ::moe::testing::MaxRelError;
using ::moe::testing::OpTol;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::moe::testing::TestSeed;

constexpr uint8_t kSentinel = 0xA5;  // fills C before a call; must survive outside the outputs

// A rows x cols matrix stored row-major with leading dim ld; padding holds NaN, so a kernel
// that uses it produces NaN.
struct HostMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  DType dtype = DType::kF32;
  std::vector<double> values;  // rows * ld, as stored (rounded to dtype)
  std::vector<uint8_t> bytes;

  double at(int64_t r, int64_t c) const { return values[r * ld + c]; }
};

HostMatrix RandomMatrix(int64_t rows, int64_t cols, int64_t ld, DType dtype, std::mt19937_64& rng) {
  HostMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.ld = ld;
  m.dtype = dtype;
  m.values = RoundTo(RandomUniform(rows * ld, rng), dtype);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = cols; c < ld; ++c) m.values[r * ld + c] = std::nan("");
  }
  m.bytes = Encode(m.values, dtype);
  return m;
}

// A stored matrix that holds op(X) of logical shape rows x cols.
HostMatrix RandomOperand(int64_t rows, int64_t cols, bool trans, int64_t pad, DType dtype,
                         std::mt19937_64& rng) {
  return trans ? RandomMatrix(cols, rows, rows + pad, dtype, rng)
               : RandomMatrix(rows, cols, cols + pad, dtype, rng);
}

double OpAt(const HostMatrix& x, bool trans, int64_t r, int64_t c, int64_t offset_elems = 0) {
  const int64_t i = trans ? c * x.ld + r : r * x.ld + c;
  return x.values[offset_elems + i];
}

// Float64 C[m, n] of op(A) op(B); matrices start offset_a / offset_b elements into storage.
std::vector<double> Reference(const HostMatrix& a, bool trans_a, int64_t offset_a,
                              const HostMatrix& b, bool trans_b, int64_t offset_b, int64_t m,
                              int64_t n, int64_t k) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        s += OpAt(a, trans_a, i, p, offset_a) * OpAt(b, trans_b, p, j, offset_b);
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

// The m x n block of C at element offset `offset` with leading dim ld, as doubles.
std::vector<double> ReadBlock(const std::vector<uint8_t>& c, DType dtype, int64_t offset, int64_t m,
                              int64_t n, int64_t ld) {
  std::vector<double> out;
  out.reserve(m * n);
  const int64_t size = DTypeSize(dtype);
  for (int64_t i = 0; i < m; ++i) {
    const std::vector<double> row = Decode(c.data() + (offset + i * ld) * size, n, dtype);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

// Marks the bytes of an m x n block at element offset `offset`; the rest must keep kSentinel.
void MarkBlock(std::vector<bool>* written, DType dtype, int64_t offset, int64_t m, int64_t n,
               int64_t ld) {
  const int64_t size = DTypeSize(dtype);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t start = (offset + i * ld) * size;
    std::fill(written->begin() + start, written->begin() + start + n * size, true);
  }
}

void ExpectOnlyBlocksWritten(const std::vector<uint8_t>& c, const std::vector<bool>& written) {
  int64_t stray = 0;
  for (size_t i = 0; i < c.size(); ++i) stray += !written[i] && c[i] != kSentinel;
  EXPECT_EQ(stray, 0) << "bytes written outside the outputs";
}

struct DtypeCase {
  DType ab;
  DType c;
};

std::string CaseName(const ::testing::TestParamInfo<DtypeCase>& info) {
  return absl::StrCat(DTypeName(info.param.ab), "_to_", DTypeName(info.param.c));
}

const DtypeCase kDtypeCases[] = {{DType::kF32, DType::kF32},
                                 {DType::kF32, DType::kBF16},
                                 {DType::kBF16, DType::kF32},
                                 {DType::kBF16, DType::kBF16}};

class GemmTest : public ::testing::TestWithParam<DtypeCase> {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
  CpuBackend three_{CpuBackendOptions{3}};  // more threads than cores: still the same bits
};

// One plain GEMM, checked against float64, C's padding untouched; returns C's bytes.
std::vector<uint8_t> CheckGemm(Backend& backend, DtypeCase dt, int64_t m, int64_t n, int64_t k,
                               bool trans_a, bool trans_b, int64_t pad, std::mt19937_64& rng) {
  SCOPED_TRACE(absl::StrCat("m=", m, " n=", n, " k=", k, " trans_a=", trans_a, " trans_b=", trans_b,
                            " pad=", pad));
  const HostMatrix a = RandomOperand(m, k, trans_a, pad, dt.ab, rng);
  const HostMatrix b = RandomOperand(k, n, trans_b, pad + 2, dt.ab, rng);
  const int64_t ldc = n + 2 * pad;
  std::vector<uint8_t> c(m * ldc * DTypeSize(dt.c), kSentinel);
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a.bytes.data();
  g.a_dtype = dt.ab;
  g.lda = a.ld;
  g.trans_a = trans_a;
  g.b = b.bytes.data();
  g.b_dtype = dt.ab;
  g.ldb = b.ld;
  g.trans_b = trans_b;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = ldc;
  const absl::Status s = backend.Gemm(g);
  EXPECT_TRUE(s.ok()) << s;
  const std::vector<double> want = Reference(a, trans_a, 0, b, trans_b, 0, m, n, k);
  const std::vector<double> got = ReadBlock(c, dt.c, 0, m, n, ldc);
  EXPECT_LE(MaxRelError(got, want), OpTol(dt.c));
  std::vector<bool> written(c.size(), false);
  MarkBlock(&written, dt.c, 0, m, n, ldc);
  ExpectOnlyBlocksWritten(c, written);
  return c;
}

TEST_P(GemmTest, MatchesFloat64OnOddAndRoundSizes) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (int64_t m : {1, 3, 17, 64}) {
    for (int64_t k : {1, 7, 129}) {
      for (int64_t n : {5, 33, 256}) {
        for (int t = 0; t < 4; ++t) {
          for (int64_t pad : {0, 3}) {
            CheckGemm(two_, GetParam(), m, n, k, t & 1, t & 2, pad, rng);
          }
        }
      }
    }
  }
}

TEST_P(GemmTest, MatchesFloat64AcrossTileEdges) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  // Rows and columns past one tile (256 x 512), with tails of 1.
  for (auto [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {257, 513, 65}, {300, 1100, 33}, {512, 1024, 16}}) {
    CheckGemm(two_, GetParam(), m, n, k, false, false, 1, rng);
    CheckGemm(two_, GetParam(), m, n, k, true, true, 0, rng);
  }
}

TEST_P(GemmTest, LargeKMatchesFloat64) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  CheckGemm(two_, GetParam(), 8, 64, 4096, false, false, 0, rng);
  CheckGemm(two_, GetParam(), 2, 40, 3000, false, true, 5, rng);
}

TEST_P(GemmTest, ZeroKWritesZeros) {
  const DtypeCase dt = GetParam();
  const std::vector<uint8_t> dummy(64, 0);
  std::vector<uint8_t> c(3 * 6 * DTypeSize(dt.c), kSentinel);
  GemmArgs g;
  g.m = 3;
  g.n = 4;
  g.k = 0;
  g.a = dummy.data();
  g.a_dtype = dt.ab;
  g.lda = 0;
  g.b = dummy.data();
  g.b_dtype = dt.ab;
  g.ldb = 4;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = 6;
  ASSERT_TRUE(two_.Gemm(g).ok());
  EXPECT_EQ(ReadBlock(c, dt.c, 0, 3, 4, 6), std::vector<double>(12, 0.0));
  std::vector<bool> written(c.size(), false);
  MarkBlock(&written, dt.c, 0, 3, 4, 6);
  ExpectOnlyBlocksWritten(c, written);
}

// Bits of one GEMM on the 1-, 2- and 3-thread backends and again on the 2-thread one.
TEST_P(GemmTest, BitsIndependentOfThreadsAndRuns) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  // Small m * n with a long K is where oneDNN's own threading split K; ld > cols picks its
  // gemm:jit path, dense layouts its brgemm path.
  uint64_t case_seed = seed;
  for (auto [m, n, k, pad] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{8, 64, 4096, 0},
                                                                   {8, 64, 4096, 3},
                                                                   {1, 1024, 4096, 1},
                                                                   {3, 33, 16384, 0},
                                                                   {64, 5, 16384, 2},
                                                                   {300, 700, 129, 0}}) {
    SCOPED_TRACE(absl::StrCat("m=", m, " n=", n, " k=", k, " pad=", pad));
    ++case_seed;
    auto run = [&](Backend& backend) {
      std::mt19937_64 rng(case_seed);  // the same inputs for every backend
      return CheckGemm(backend, dt, m, n, k, false, false, pad, rng);
    };
    const std::vector<uint8_t> c1 = run(one_);
    const std::vector<uint8_t> c2 = run(two_);
    const std::vector<uint8_t> c3 = run(three_);
    const std::vector<uint8_t> again = run(two_);
    EXPECT_EQ(c1, c2);
    EXPECT_EQ(c1, c3);
    EXPECT_EQ(c2, again);
  }
}

struct BatchedCase {
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  int64_t pad;
  bool broadcast_a, broadcast_b;
};

// Runs a batched GEMM, checks every matrix against float64 and the gaps untouched.
std::vector<uint8_t> CheckBatched(Backend& backend, DtypeCase dt, const BatchedCase& bc,
                                  uint64_t seed) {
  SCOPED_TRACE(absl::StrCat("batch=", bc.batch, " m=", bc.m, " n=", bc.n, " k=", bc.k,
                            " trans_a=", bc.trans_a, " trans_b=", bc.trans_b, " pad=", bc.pad,
                            " broadcast_a=", bc.broadcast_a, " broadcast_b=", bc.broadcast_b));
  std::mt19937_64 rng(seed);
  const int64_t a_rows = bc.trans_a ? bc.k : bc.m, a_cols = bc.trans_a ? bc.m : bc.k;
  const int64_t b_rows = bc.trans_b ? bc.n : bc.k, b_cols = bc.trans_b ? bc.k : bc.n;
  const int64_t lda = a_cols + bc.pad, ldb = b_cols + bc.pad, ldc = bc.n + bc.pad;
  // Whole matrices stacked with a gap of one row between them.
  const int64_t stride_a = bc.broadcast_a ? 0 : (a_rows + 1) * lda;
  const int64_t stride_b = bc.broadcast_b ? 0 : (b_rows + 1) * ldb;
  const int64_t stride_c = (bc.m + 1) * ldc;
  const HostMatrix a =
      RandomMatrix((bc.broadcast_a ? 1 : bc.batch) * (a_rows + 1), a_cols, lda, dt.ab, rng);
  const HostMatrix b =
      RandomMatrix((bc.broadcast_b ? 1 : bc.batch) * (b_rows + 1), b_cols, ldb, dt.ab, rng);
  std::vector<uint8_t> c(bc.batch * stride_c * DTypeSize(dt.c), kSentinel);
  BatchedGemmArgs args;
  GemmArgs& g = args.gemm;
  g.m = bc.m;
  g.n = bc.n;
  g.k = bc.k;
  g.a = a.bytes.data();
  g.a_dtype = dt.ab;
  g.lda = lda;
  g.trans_a = bc.trans_a;
  g.b = b.bytes.data();
  g.b_dtype = dt.ab;
  g.ldb = ldb;
  g.trans_b = bc.trans_b;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = ldc;
  args.batch = bc.batch;
  args.stride_a = stride_a;
  args.stride_b = stride_b;
  args.stride_c = stride_c;
  const absl::Status s = backend.BatchedGemm(args);
  EXPECT_TRUE(s.ok()) << s;
  std::vector<bool> written(c.size(), false);
  for (int64_t i = 0; i < bc.batch; ++i) {
    const std::vector<double> want =
        Reference(a, bc.trans_a, i * stride_a, b, bc.trans_b, i * stride_b, bc.m, bc.n, bc.k);
    EXPECT_LE(MaxRelError(ReadBlock(c, dt.c, i * stride_c, bc.m, bc.n, ldc), want), OpTol(dt.c))
        << "matrix " << i;
    MarkBlock(&written, dt.c, i * stride_c, bc.m, bc.n, ldc);
  }
  ExpectOnlyBlocksWritten(c, written);
  return c;
}

TEST_P(GemmTest, BatchedMatchesFloat64) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (const BatchedCase& bc :
       std::vector<BatchedCase>{{1, 3, 5, 7, false, false, 0, false, false},
                                {4, 17, 33, 129, false, false, 0, false, false},
                                {3, 17, 33, 129, true, false, 3, false, false},
                                {3, 17, 33, 129, false, true, 3, false, false},
                                {2, 64, 256, 7, true, true, 1, false, false},
                                {5, 1, 256, 129, false, false, 0, false, false},
                                {3, 300, 600, 40, false, false, 2, false, false},
                                // Stride 0: one B (or A) for every matrix.
                                {4, 17, 33, 129, false, false, 0, false, true},
                                {4, 17, 33, 129, false, true, 2, false, true},
                                {4, 17, 33, 129, true, false, 2, true, false},
                                {3, 5, 9, 11, false, false, 0, true, true}}) {
    CheckBatched(two_, GetParam(), bc, seed);
  }
}

TEST_P(GemmTest, BatchedBitsIndependentOfThreadsAndRuns) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  // The equal-count expert shape at a small scale, and a long-K one.
  for (const BatchedCase& bc :
       std::vector<BatchedCase>{{8, 64, 192, 256, false, false, 0, false, false},
                                {4, 4, 48, 4096, false, false, 1, false, false}}) {
    const std::vector<uint8_t> c1 = CheckBatched(one_, GetParam(), bc, seed);
    const std::vector<uint8_t> c2 = CheckBatched(two_, GetParam(), bc, seed);
    const std::vector<uint8_t> c3 = CheckBatched(three_, GetParam(), bc, seed);
    const std::vector<uint8_t> again = CheckBatched(two_, GetParam(), bc, seed);
    EXPECT_EQ(c1, c2);
    EXPECT_EQ(c1, c3);
    EXPECT_EQ(c2, again);
  }
}

TEST_P(GemmTest, BatchedZeroKWritesZeros) {
  const DtypeCase dt = GetParam();
  const std::vector<uint8_t> dummy(64, 0);
  std::vector<uint8_t> c(3 * 2 * 5 * DTypeSize(dt.c), kSentinel);  // 3 matrices, gap of 1 row
  BatchedGemmArgs args;
  GemmArgs& g = args.gemm;
  g.m = 1;
  g.n = 4;
  g.k = 0;
  g.a = dummy.data();
  g.a_dtype = dt.ab;
  g.b = dummy.data();
  g.b_dtype = dt.ab;
  g.ldb = 4;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = 5;
  args.batch = 3;
  args.stride_c = 10;
  ASSERT_TRUE(two_.BatchedGemm(args).ok());
  std::vector<bool> written(c.size(), false);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ReadBlock(c, dt.c, i * 10, 1, 4, 5), std::vector<double>(4, 0.0));
    MarkBlock(&written, dt.c, i * 10, 1, 4, 5);
  }
  ExpectOnlyBlocksWritten(c, written);
}

struct GroupedRun {
  std::vector<uint8_t> c;
  HostMatrix a, b;
};

// A grouped GEMM over `counts` rows per group with B stride `stride_b` (0: one B for all),
// checked against float64 per group, rows of C beyond the groups untouched.
GroupedRun CheckGrouped(Backend& backend, DtypeCase dt, const std::vector<int64_t>& counts,
                        int64_t n, int64_t k, bool trans_b, int64_t pad, bool broadcast_b,
                        uint64_t seed) {
  SCOPED_TRACE(absl::StrCat("counts=", ::testing::PrintToString(counts), " n=", n, " k=", k,
                            " trans_b=", trans_b, " pad=", pad, " broadcast_b=", broadcast_b));
  std::mt19937_64 rng(seed);
  const int64_t groups = static_cast<int64_t>(counts.size());
  std::vector<int64_t> offsets(groups + 1, 0);
  for (int64_t i = 0; i < groups; ++i) offsets[i + 1] = offsets[i] + counts[i];
  const int64_t rows = offsets[groups];
  const int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
  const int64_t ldb = b_cols + pad, ldc = n + pad;
  const int64_t stride_b = broadcast_b ? 0 : b_rows * ldb;
  GroupedRun run;
  // Two spare rows of C below the last group: they must stay untouched.
  run.a = RandomMatrix(std::max<int64_t>(rows, 1), k, k + pad, dt.ab, rng);
  run.b = RandomMatrix((broadcast_b ? 1 : groups) * b_rows, b_cols, ldb, dt.ab, rng);
  run.c.assign((rows + 2) * ldc * DTypeSize(dt.c), kSentinel);
  GroupedGemmArgs args;
  GemmArgs& g = args.gemm;
  g.n = n;
  g.k = k;
  g.a = run.a.bytes.data();
  g.a_dtype = dt.ab;
  g.lda = run.a.ld;
  g.b = run.b.bytes.data();
  g.b_dtype = dt.ab;
  g.ldb = ldb;
  g.trans_b = trans_b;
  g.c = run.c.data();
  g.c_dtype = dt.c;
  g.ldc = ldc;
  args.num_groups = groups;
  args.offsets = offsets.data();
  args.stride_b = stride_b;
  const absl::Status s = backend.GroupedGemm(args);
  EXPECT_TRUE(s.ok()) << s;
  std::vector<bool> written(run.c.size(), false);
  for (int64_t i = 0; i < groups; ++i) {
    if (counts[i] == 0) continue;
    const std::vector<double> want = Reference(run.a, false, offsets[i] * run.a.ld, run.b, trans_b,
                                               i * stride_b, counts[i], n, k);
    EXPECT_LE(MaxRelError(ReadBlock(run.c, dt.c, offsets[i] * ldc, counts[i], n, ldc), want),
              OpTol(dt.c))
        << "group " << i;
    MarkBlock(&written, dt.c, offsets[i] * ldc, counts[i], n, ldc);
  }
  ExpectOnlyBlocksWritten(run.c, written);
  return run;
}

TEST_P(GemmTest, GroupedMatchesFloat64WithEmptyGroups) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  const DtypeCase dt = GetParam();
  // Empty groups at the start, in the middle and at the end.
  CheckGrouped(two_, dt, {0, 0, 5, 0, 17, 1, 0, 3, 0}, 33, 129, false, 0, false, seed);
  CheckGrouped(two_, dt, {0, 5, 0, 17, 1, 0, 3, 0, 0}, 33, 129, true, 3, false, seed);
  CheckGrouped(two_, dt, {3, 0, 0, 64}, 256, 7, false, 1, false, seed);
  CheckGrouped(two_, dt, {300, 0, 2}, 600, 40, false, 0, false, seed);
  CheckGrouped(two_, dt, {1}, 5, 1, false, 0, false, seed);
  // One B for every group.
  CheckGrouped(two_, dt, {4, 0, 9, 2}, 33, 129, false, 2, true, seed);
  CheckGrouped(two_, dt, {4, 0, 9, 2}, 33, 129, true, 0, true, seed);
}

TEST_P(GemmTest, GroupedAllEmptyTouchesNothing) {
  const uint64_t seed = TestSeed();
  CheckGrouped(two_, GetParam(), {0, 0, 0}, 33, 129, false, 0, false, seed);
  CheckGrouped(two_, GetParam(), {0}, 5, 7, true, 1, false, seed);
}

TEST_P(GemmTest, GroupedZeroKWritesZeros) {
  const DtypeCase dt = GetParam();
  const std::vector<uint8_t> dummy(64, 0);
  const std::vector<int64_t> offsets = {0, 0, 2, 2, 3};
  std::vector<uint8_t> c(4 * 6 * DTypeSize(dt.c), kSentinel);
  GroupedGemmArgs args;
  GemmArgs& g = args.gemm;
  g.n = 5;
  g.k = 0;
  g.a = dummy.data();
  g.a_dtype = dt.ab;
  g.b = dummy.data();
  g.b_dtype = dt.ab;
  g.ldb = 5;
  g.c = c.data();
  g.c_dtype = dt.c;
  g.ldc = 6;
  args.num_groups = 4;
  args.offsets = offsets.data();
  ASSERT_TRUE(two_.GroupedGemm(args).ok());
  EXPECT_EQ(ReadBlock(c, dt.c, 0, 3, 5, 6), std::vector<double>(15, 0.0));
  std::vector<bool> written(c.size(), false);
  MarkBlock(&written, dt.c, 0, 3, 5, 6);
  ExpectOnlyBlocksWritten(c, written);
}

TEST_P(GemmTest, GroupedBitsIndependentOfThreadsAndRuns) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  const std::vector<int64_t> counts = {0, 37, 1, 0, 300, 8, 0};
  const GroupedRun r1 = CheckGrouped(one_, GetParam(), counts, 600, 256, false, 1, false, seed);
  const GroupedRun r2 = CheckGrouped(two_, GetParam(), counts, 600, 256, false, 1, false, seed);
  const GroupedRun r3 = CheckGrouped(three_, GetParam(), counts, 600, 256, false, 1, false, seed);
  const GroupedRun again = CheckGrouped(two_, GetParam(), counts, 600, 256, false, 1, false, seed);
  EXPECT_EQ(r1.c, r2.c);
  EXPECT_EQ(r1.c, r3.c);
  EXPECT_EQ(r2.c, again.c);
}

// The expert fast path (batched over [E, C, D]) and the general path (grouped over E segments
// of C rows) must give the same bits on equal counts.
TEST_P(GemmTest, GroupedEqualsBatchedBitwiseOnEqualCounts) {
  const DtypeCase dt = GetParam();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  for (auto [experts, rows, k, n, trans_b] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{{4, 37, 129, 600, false},
                                                                         {8, 64, 256, 192, false},
                                                                         {3, 1, 64, 33, true},
                                                                         {2, 300, 48, 520, true}}) {
    SCOPED_TRACE(absl::StrCat("E=", experts, " C=", rows, " k=", k, " n=", n));
    const GroupedRun grouped =
        CheckGrouped(two_, dt, std::vector<int64_t>(experts, rows), n, k, trans_b, 0, false, seed);
    // Same buffers as one batched call: A [E*C, k] viewed as [E, C, k], B and C likewise.
    std::vector<uint8_t> c(grouped.c.size(), kSentinel);
    BatchedGemmArgs args;
    GemmArgs& g = args.gemm;
    g.m = rows;
    g.n = n;
    g.k = k;
    g.a = grouped.a.bytes.data();
    g.a_dtype = dt.ab;
    g.lda = grouped.a.ld;
    g.b = grouped.b.bytes.data();
    g.b_dtype = dt.ab;
    g.ldb = grouped.b.ld;
    g.trans_b = trans_b;
    g.c = c.data();
    g.c_dtype = dt.c;
    g.ldc = n;
    args.batch = experts;
    args.stride_a = rows * grouped.a.ld;
    args.stride_b = (trans_b ? n : k) * grouped.b.ld;
    args.stride_c = rows * n;
    ASSERT_TRUE(one_.BatchedGemm(args).ok());
    EXPECT_EQ(c, grouped.c);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmTest, ::testing::ValuesIn(kDtypeCases), CaseName);

TEST(GemmThreadsTest, CallerOmpSettingIsRestored) {
  omp_set_num_threads(2);
  CpuBackend backend(CpuBackendOptions{1});
  std::vector<float> a(8 * 16, 1.0f), b(16 * 8, 1.0f), c(64);
  GemmArgs g;
  g.m = 8;
  g.n = 8;
  g.k = 16;
  g.a = a.data();
  g.lda = 16;
  g.b = b.data();
  g.ldb = 8;
  g.c = c.data();
  g.ldc = 8;
  ASSERT_TRUE(backend.Gemm(g).ok());
  EXPECT_EQ(c, std::vector<float>(64, 16.0f));
  EXPECT_EQ(omp_get_max_threads(), 2);
}

TEST(OneDnnMatmulCacheTest, BoundedLeastRecentlyUsed) {
  OneDnnMatmulCache cache(/*num_threads=*/1, /*capacity=*/2);
  ASSERT_TRUE(cache.init_status().ok()) << cache.init_status();
  auto key = [](int64_t m) {
    MatmulKey k;
    k.m = m;
    k.n = 8;
    k.k = 8;
    k.lda = 8;
    k.ldb = 8;
    k.ldc = 8;
    return k;
  };
  ASSERT_TRUE(cache.Get(key(1)).ok());
  ASSERT_TRUE(cache.Get(key(2)).ok());
  ASSERT_TRUE(cache.Get(key(1)).ok());  // hit; key(2) is now the least recently used
  ASSERT_TRUE(cache.Get(key(3)).ok());  // evicts key(2)
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.hits(), 1);
  EXPECT_EQ(cache.misses(), 3);
  ASSERT_TRUE(cache.Get(key(1)).ok());
  EXPECT_EQ(cache.hits(), 2);
  ASSERT_TRUE(cache.Get(key(2)).ok());
  EXPECT_EQ(cache.misses(), 4);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(OneDnnMatmulCacheTest, RuntimeShapePrimitiveIsGemmJit) {
  OneDnnMatmulCache cache(1);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    MatmulKey key;  // all dims at run time
    key.dtype = dtype;
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> p = cache.Get(key);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE(absl::StartsWith((*p)->impl, "gemm")) << (*p)->impl;
  }
}

TEST(OneDnnMatmulCacheTest, DnnlErrorsBecomeStatuses) {
  EXPECT_EQ(DnnlErrorToStatus(dnnl::error(dnnl_out_of_memory, "oom"), "gemm m=1").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(DnnlErrorToStatus(dnnl::error(dnnl_unimplemented, "x"), "gemm").code(),
            absl::StatusCode::kUnimplemented);
  const absl::Status s = DnnlErrorToStatus(dnnl::error(dnnl_runtime_error, "boom"), "gemm m=3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(s.message(), "gemm m=3")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "boom")) << s;
}

TEST(CpuBackendBasicsTest, DescribeNamesOneDnnIsaAndThreads) {
  CpuBackend two(CpuBackendOptions{2});
  const std::string d = two.Describe();
  EXPECT_TRUE(absl::StartsWith(d, "cpu (oneDNN 2.")) << d;
  EXPECT_TRUE(absl::StrContains(d, "isa ")) << d;
  EXPECT_TRUE(absl::StrContains(d, "2 threads)")) << d;
  EXPECT_TRUE(absl::StrContains(CpuBackend(CpuBackendOptions{1}).Describe(), "1 thread)"));
}

TEST(CpuBackendBasicsTest, DefaultThreadsComeFromOpenMp) {
  CpuBackend backend;
  EXPECT_GE(backend.num_threads(), 1);
  EXPECT_EQ(backend.num_threads(), omp_get_max_threads());
  absl::StatusOr<std::unique_ptr<Backend>> created = CreateBackend(Device::Cpu(), {3});
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(absl::StrContains((*created)->Describe(), "3 threads")) << (*created)->Describe();
}

TEST(CpuBackendBasicsTest, AllocateIsAlignedAndCopiesWork) {
  CpuBackend backend(CpuBackendOptions{1});
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{1000}}) {
    absl::StatusOr<void*> p = backend.Allocate(bytes);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_NE(*p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % 64, 0u) << bytes;
    backend.Free(*p);
  }
  backend.Free(nullptr);
  absl::StatusOr<void*> p = backend.Allocate(16);
  ASSERT_TRUE(p.ok());
  const std::string src = "0123456789abcdef";
  std::string dst(16, '.');
  ASSERT_TRUE(backend.CopyFromHost(*p, src.data(), 16).ok());
  ASSERT_TRUE(backend.CopyOnDevice(static_cast<char*>(*p) + 1, *p, 8).ok());  // overlapping
  ASSERT_TRUE(backend.CopyToHost(&dst[0], *p, 16).ok());
  EXPECT_EQ(dst, "0012345679abcdef");
  EXPECT_TRUE(backend.CopyToHost(nullptr, *p, 0).ok());
  EXPECT_EQ(backend.CopyToHost(nullptr, *p, 4).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(backend.Synchronize().ok());
  backend.Free(*p);
}

TEST(CpuBackendBasicsTest, HugeAllocationIsResourceExhausted) {
  CpuBackend backend(CpuBackendOptions{1});
  for (size_t bytes : {size_t{1} << 62, std::numeric_limits<size_t>::max()}) {
    absl::StatusOr<void*> p = backend.Allocate(bytes);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_TRUE(absl::StrContains(p.status().message(), absl::StrCat(bytes))) << p.status();
  }
}

// ---------------------------------------------------------------------------------------------
// Throughput; not a test. Min of repeated runs (the machine may be shared).

double BestSeconds(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<uint16_t> RandomBf16(int64_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = FloatToBf16(dist(rng)).bits;
  return v;
}

void Report(const char* what, double flops, double weight_bytes, double seconds) {
  std::printf("%-58s %9.3f ms %8.1f GFLOP/s %7.1f GB/s weights\n", what, seconds * 1e3,
              flops / seconds / 1e9, weight_bytes / seconds / 1e9);
}

// oneDNN on its own: one multi-threaded primitive for the whole shape (plain B, or B reordered
// once into the layout the primitive prefers), for comparison.
void ReportOneDnn(const char* what, int64_t batch, int64_t m, int64_t n, int64_t k,
                  const uint16_t* a, const uint16_t* b, uint16_t* c, bool prepacked, int reps) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(eng);
  const bool b3 = batch > 1;
  const dnnl::memory::dims ad = b3 ? dnnl::memory::dims{batch, m, k} : dnnl::memory::dims{m, k};
  const dnnl::memory::dims bd = b3 ? dnnl::memory::dims{batch, k, n} : dnnl::memory::dims{k, n};
  const dnnl::memory::dims cd = b3 ? dnnl::memory::dims{batch, m, n} : dnnl::memory::dims{m, n};
  const tag plain = b3 ? tag::abc : tag::ab;
  dnnl::memory::desc a_md(ad, dt::bf16, plain), c_md(cd, dt::bf16, plain);
  dnnl::memory::desc b_plain(bd, dt::bf16, plain);
  dnnl::memory::desc b_md = prepacked ? dnnl::memory::desc(bd, dt::bf16, tag::any) : b_plain;
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
  dnnl::matmul mm(pd);
  dnnl::memory am(a_md, eng, const_cast<uint16_t*>(a)), cm(c_md, eng, c);
  dnnl::memory bm(b_plain, eng, const_cast<uint16_t*>(b));
  if (prepacked && pd.weights_desc() != b_plain) {
    dnnl::memory packed(pd.weights_desc(), eng);
    dnnl::reorder(bm, packed).execute(stream, bm, packed);
    stream.wait();
    bm = packed;
  }
  const double s = BestSeconds(reps, [&] {
    mm.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  });
  Report(absl::StrCat(what, " [", pd.impl_info_str(), "]").c_str(), 2.0 * batch * m * n * k,
         2.0 * batch * k * n, s);
}

TEST(GemmBenchmark, DISABLED_Benchmark) {
  CpuBackend backend;
  std::printf("%s\n", backend.Describe().c_str());
  std::mt19937_64 rng(1);
  auto gemm = [&](int64_t m, int64_t n, int64_t k, const void* a, const void* b, void* c) {
    GemmArgs g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a;
    g.a_dtype = DType::kBF16;
    g.lda = k;
    g.b = b;
    g.b_dtype = DType::kBF16;
    g.ldb = n;
    g.c = c;
    g.c_dtype = DType::kBF16;
    g.ldc = n;
    return g;
  };
  {
    const int64_t m = 2048, n = 4096, k = 4096;
    const std::vector<uint16_t> a = RandomBf16(m * k, rng), b = RandomBf16(k * n, rng);
    std::vector<uint16_t> c(m * n);
    const GemmArgs g = gemm(m, n, k, a.data(), b.data(), c.data());
    Report("gemm bf16 2048x4096x4096 (backend)", 2.0 * m * n * k, 2.0 * k * n,
           BestSeconds(3, [&] { ASSERT_TRUE(backend.Gemm(g).ok()); }));
    ReportOneDnn("  oneDNN alone, plain B", 1, m, n, k, a.data(), b.data(), c.data(), false, 3);
  }
  {
    const int64_t n = 28672, k = 4096;
    const std::vector<uint16_t> b = RandomBf16(k * n, rng), a = RandomBf16(128 * k, rng);
    std::vector<uint16_t> c(128 * n);
    for (int64_t m : {1, 8, 32, 128}) {
      const GemmArgs g = gemm(m, n, k, a.data(), b.data(), c.data());
      Report(absl::StrCat("gemm bf16 m=", m, " k=4096 n=28672 (backend)").c_str(), 2.0 * m * n * k,
             2.0 * k * n, BestSeconds(10, [&] { ASSERT_TRUE(backend.Gemm(g).ok()); }));
      ReportOneDnn("  oneDNN alone, plain B (re-packed per call)", 1, m, n, k, a.data(), b.data(),
                   c.data(), false, 10);
      ReportOneDnn("  oneDNN alone, B pre-packed once", 1, m, n, k, a.data(), b.data(), c.data(),
                   true, 10);
    }
  }
  {
    const int64_t e = 8, rows = 64, k = 2048, n = 1536;
    const std::vector<uint16_t> a = RandomBf16(e * rows * k, rng), b = RandomBf16(e * k * n, rng);
    std::vector<uint16_t> c(e * rows * n);
    BatchedGemmArgs args;
    args.gemm = gemm(rows, n, k, a.data(), b.data(), c.data());
    args.batch = e;
    args.stride_a = rows * k;
    args.stride_b = k * n;
    args.stride_c = rows * n;
    const double flops = 2.0 * e * rows * n * k, bytes = 2.0 * e * k * n;
    Report("batched bf16 [8,64,2048]x[2048,1536] (backend)", flops, bytes,
           BestSeconds(20, [&] { ASSERT_TRUE(backend.BatchedGemm(args).ok()); }));
    std::vector<int64_t> offsets;
    for (int64_t i = 0; i <= e; ++i) offsets.push_back(i * rows);
    GroupedGemmArgs grouped;
    grouped.gemm = args.gemm;
    grouped.num_groups = e;
    grouped.offsets = offsets.data();
    grouped.stride_b = k * n;
    Report("grouped, same counts (backend)", flops, bytes,
           BestSeconds(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped).ok()); }));
    const std::vector<int64_t> uneven = {0, 17, 120, 64, 1, 200, 0, 110};  // also 512 rows
    offsets.assign(1, 0);
    for (int64_t r : uneven) offsets.push_back(offsets.back() + r);
    Report("grouped, counts 0,17,120,64,1,200,0,110 (backend)", flops, bytes,
           BestSeconds(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped).ok()); }));
    ReportOneDnn("  oneDNN alone, one 3-D primitive", e, rows, n, k, a.data(), b.data(), c.data(),
                 false, 20);
  }
}

}  // namespace
}  // namespace moe
