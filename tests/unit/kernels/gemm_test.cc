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
#include <memory>
#include <random>
#include <string>
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

// Packs `batch` B matrices stored in `b` `stride` elements apart (op(B) [k, n] each).
std::unique_ptr<PackedWeights> Pack(Backend& backend, const HostMatrix& b, int64_t batch, int64_t k,
                                    int64_t n, bool trans_b, int64_t stride) {
  PackWeightsArgs args;
  args.batch = batch;
  args.k = k;
  args.n = n;
  args.b = b.bytes.data();
  args.dtype = b.dtype;
  args.ldb = b.ld;
  args.trans_b = trans_b;
  args.stride_b = stride;
  absl::StatusOr<std::unique_ptr<PackedWeights>> packed = backend.PackWeights(args);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return packed.ok() ? *std::move(packed) : nullptr;
}

// Reads B from `packed` (matrix `index` first) instead of the plain fields, which are then
// cleared to show they are unused.
void UsePacked(const PackedWeights* packed, int64_t index, GemmArgs* g) {
  g->packed_b = packed;
  g->packed_b_index = index;
  g->b = nullptr;
  g->ldb = 0;
  g->trans_b = !packed->trans_b();
}

// One GEMM (B plain, or packed first when `packed`), checked against float64, C's padding
// untouched; returns C's bytes.
std::vector<uint8_t> CheckGemm(Backend& backend, DtypeCase dt, int64_t m, int64_t n, int64_t k,
                               bool trans_a, bool trans_b, int64_t pad, std::mt19937_64& rng,
                               bool packed = false) {
  SCOPED_TRACE(absl::StrCat("m=", m, " n=", n, " k=", k, " trans_a=", trans_a, " trans_b=", trans_b,
                            " pad=", pad, packed ? " packed" : ""));
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
  std::unique_ptr<PackedWeights> packed_b;
  if (packed) {
    packed_b = Pack(backend, b, 1, k, n, trans_b, 0);
    if (packed_b == nullptr) return c;
    UsePacked(packed_b.get(), 0, &g);
  }
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

// Runs a batched GEMM (B plain, or packed first when `packed`), checks every matrix against
// float64 and the gaps untouched.
std::vector<uint8_t> CheckBatched(Backend& backend, DtypeCase dt, const BatchedCase& bc,
                                  uint64_t seed, bool packed = false) {
  SCOPED_TRACE(absl::StrCat("batch=", bc.batch, " m=", bc.m, " n=", bc.n, " k=", bc.k,
                            " trans_a=", bc.trans_a, " trans_b=", bc.trans_b, " pad=", bc.pad,
                            " broadcast_a=", bc.broadcast_a, " broadcast_b=", bc.broadcast_b,
                            packed ? " packed" : ""));
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
  std::unique_ptr<PackedWeights> packed_b;
  if (packed) {
    // One extra matrix in front, so that the GEMM starts at packed_b_index 1: copies of
    // matrix 0 (stride 0), then each matrix repacked from its place.
    PackWeightsArgs pack;
    pack.batch = bc.batch + 1;
    pack.k = bc.k;
    pack.n = bc.n;
    pack.b = b.bytes.data();
    pack.dtype = dt.ab;
    pack.ldb = ldb;
    pack.trans_b = bc.trans_b;
    pack.stride_b = 0;
    absl::StatusOr<std::unique_ptr<PackedWeights>> made = backend.PackWeights(pack);
    EXPECT_TRUE(made.ok()) << made.status();
    if (!made.ok()) return c;
    packed_b = *std::move(made);
    if (stride_b != 0) {
      for (int64_t i = 1; i < bc.batch; ++i) {
        const absl::Status s = backend.RepackWeights(
            packed_b.get(), i + 1, b.bytes.data() + i * stride_b * DTypeSize(dt.ab), ldb);
        EXPECT_TRUE(s.ok()) << s;
      }
    }
    UsePacked(packed_b.get(), 1, &g);
    args.stride_b = 12345;  // ignored
  }
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
// B plain or packed first (`packed`), checked against float64 per group, rows of C beyond
// the groups untouched.
GroupedRun CheckGrouped(Backend& backend, DtypeCase dt, const std::vector<int64_t>& counts,
                        int64_t n, int64_t k, bool trans_b, int64_t pad, bool broadcast_b,
                        uint64_t seed, bool packed = false) {
  SCOPED_TRACE(absl::StrCat("counts=", ::testing::PrintToString(counts), " n=", n, " k=", k,
                            " trans_b=", trans_b, " pad=", pad, " broadcast_b=", broadcast_b,
                            packed ? " packed" : ""));
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
  std::unique_ptr<PackedWeights> packed_b;
  if (packed) {
    packed_b = Pack(backend, run.b, groups, k, n, trans_b, stride_b);
    if (packed_b == nullptr) return run;
    UsePacked(packed_b.get(), 0, &g);
    args.stride_b = -1;  // ignored
  }
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

// ---------------------------------------------------------------------------------------------
// Pre-packed B (Backend::PackWeights).

TEST_P(GemmTest, PackedMatchesFloat64OnOddAndRoundSizes) {
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

TEST_P(GemmTest, PackedLargeKMatchesFloat64) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  CheckGemm(two_, GetParam(), 8, 600, 4096, false, false, 0, rng, true);
  CheckGemm(two_, GetParam(), 2, 40, 3000, false, true, 5, rng, true);
}

TEST_P(GemmTest, PackedZeroKWritesZeros) {
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

TEST_P(GemmTest, PackedBitsIndependentOfThreadsAndRuns) {
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
TEST_P(GemmTest, PackedRowBitsIndependentOfTileHeight) {
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
TEST_P(GemmTest, PackedAgreesWithPlainB) {
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

TEST_P(GemmTest, PackedBatchedMatchesFloat64) {
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

TEST_P(GemmTest, PackedGroupedMatchesFloat64WithEmptyGroups) {
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
TEST_P(GemmTest, PackedGemmBatchedAndGroupedAreBitIdentical) {
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
TEST_P(GemmTest, RepackRefreshesOneMatrix) {
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

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmTest, ::testing::ValuesIn(kDtypeCases), CaseName);

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
  p.b = nullptr;
  ExpectInvalid(backend_.PackWeights(p).status(), "pack_weights: b is null");
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
// Throughput; not a test. Median (and min) of repeated runs: the machine may be shared.

struct Seconds {
  double median = 0;
  double best = 0;
};

Seconds Time(int reps, const std::function<void()>& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

std::vector<uint16_t> RandomBf16(int64_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = FloatToBf16(dist(rng)).bits;
  return v;
}

void Report(const std::string& what, double flops, double weight_bytes, Seconds s) {
  std::printf("%-62s %9.3f ms (min %9.3f) %8.1f GFLOP/s %7.1f GB/s weights\n", what.c_str(),
              s.median * 1e3, s.best * 1e3, flops / s.median / 1e9, weight_bytes / s.median / 1e9);
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
  const Seconds s = Time(reps, [&] {
    mm.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  });
  Report(absl::StrCat(what, " [", pd.impl_info_str(), "]"), 2.0 * batch * m * n * k,
         2.0 * batch * k * n, s);
}

std::unique_ptr<PackedWeights> PackBf16(Backend& backend, int64_t batch, int64_t k, int64_t n,
                                        const uint16_t* b) {
  PackWeightsArgs args;
  args.batch = batch;
  args.k = k;
  args.n = n;
  args.b = b;
  args.dtype = DType::kBF16;
  args.ldb = n;
  args.stride_b = k * n;
  absl::StatusOr<std::unique_ptr<PackedWeights>> packed = backend.PackWeights(args);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return packed.ok() ? *std::move(packed) : nullptr;
}

// Each shape with a plain B (oneDNN re-packs it on every call: the "before") and with B packed
// once by PackWeights (the "after"), in the backend's fixed tiles on all cores.
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
  auto packed = [](GemmArgs g, const PackedWeights* p) {
    g.packed_b = p;
    return g;
  };
  {
    const int64_t m = 2048, n = 4096, k = 4096;
    const std::vector<uint16_t> a = RandomBf16(m * k, rng), b = RandomBf16(k * n, rng);
    std::vector<uint16_t> c(m * n);
    const GemmArgs g = gemm(m, n, k, a.data(), b.data(), c.data());
    const std::unique_ptr<PackedWeights> p = PackBf16(backend, 1, k, n, b.data());
    ASSERT_NE(p, nullptr);
    const GemmArgs gp = packed(g, p.get());
    Report("gemm bf16 2048x4096x4096 (backend, plain B)", 2.0 * m * n * k, 2.0 * k * n,
           Time(3, [&] { ASSERT_TRUE(backend.Gemm(g).ok()); }));
    Report("gemm bf16 2048x4096x4096 (backend, packed B)", 2.0 * m * n * k, 2.0 * k * n,
           Time(3, [&] { ASSERT_TRUE(backend.Gemm(gp).ok()); }));
    ReportOneDnn("  oneDNN alone, plain B", 1, m, n, k, a.data(), b.data(), c.data(), false, 3);
  }
  {
    const int64_t n = 28672, k = 4096;
    const std::vector<uint16_t> b = RandomBf16(k * n, rng), a = RandomBf16(128 * k, rng);
    std::vector<uint16_t> c(128 * n);
    std::unique_ptr<PackedWeights> p;
    Report("PackWeights bf16 4096x28672 (once, at load)", 0, 2.0 * k * n,
           Time(3, [&] { p = PackBf16(backend, 1, k, n, b.data()); }));
    ASSERT_NE(p, nullptr);
    for (int64_t m : {1, 8, 32, 128}) {
      const GemmArgs g = gemm(m, n, k, a.data(), b.data(), c.data());
      const GemmArgs gp = packed(g, p.get());
      const std::string shape = absl::StrCat("gemm bf16 m=", m, " k=4096 n=28672");
      Report(absl::StrCat(shape, " (backend, plain B)"), 2.0 * m * n * k, 2.0 * k * n,
             Time(10, [&] { ASSERT_TRUE(backend.Gemm(g).ok()); }));
      Report(absl::StrCat(shape, " (backend, packed B)"), 2.0 * m * n * k, 2.0 * k * n,
             Time(10, [&] { ASSERT_TRUE(backend.Gemm(gp).ok()); }));
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
    const std::unique_ptr<PackedWeights> p = PackBf16(backend, e, k, n, b.data());
    ASSERT_NE(p, nullptr);
    BatchedGemmArgs args;
    args.gemm = gemm(rows, n, k, a.data(), b.data(), c.data());
    args.batch = e;
    args.stride_a = rows * k;
    args.stride_b = k * n;
    args.stride_c = rows * n;
    BatchedGemmArgs args_packed = args;
    args_packed.gemm = packed(args.gemm, p.get());
    const double flops = 2.0 * e * rows * n * k, bytes = 2.0 * e * k * n;
    Report("batched bf16 [8,64,2048]x[2048,1536] (backend, plain B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.BatchedGemm(args).ok()); }));
    Report("batched bf16 [8,64,2048]x[2048,1536] (backend, packed B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.BatchedGemm(args_packed).ok()); }));
    std::vector<int64_t> offsets;
    for (int64_t i = 0; i <= e; ++i) offsets.push_back(i * rows);
    GroupedGemmArgs grouped;
    grouped.gemm = args.gemm;
    grouped.num_groups = e;
    grouped.offsets = offsets.data();
    grouped.stride_b = k * n;
    GroupedGemmArgs grouped_packed = grouped;
    grouped_packed.gemm = args_packed.gemm;
    Report("grouped, same counts (backend, plain B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped).ok()); }));
    Report("grouped, same counts (backend, packed B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped_packed).ok()); }));
    const std::vector<int64_t> uneven = {0, 17, 120, 64, 1, 200, 0, 110};  // also 512 rows
    offsets.assign(1, 0);
    for (int64_t r : uneven) offsets.push_back(offsets.back() + r);
    Report("grouped, counts 0,17,120,64,1,200,0,110 (backend, plain B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped).ok()); }));
    Report("grouped, counts 0,17,120,64,1,200,0,110 (backend, packed B)", flops, bytes,
           Time(20, [&] { ASSERT_TRUE(backend.GroupedGemm(grouped_packed).ok()); }));
    ReportOneDnn("  oneDNN alone, one 3-D primitive", e, rows, n, k, a.data(), b.data(), c.data(),
                 false, 20);
  }
}

}  // namespace
}  // namespace moe
