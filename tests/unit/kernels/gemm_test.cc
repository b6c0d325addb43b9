// GEMM, batched GEMM and grouped GEMM of the CPU backend with a plain B against a float64
// naive reference, their determinism (run to run, 1 vs 2 vs 3 threads, grouped vs batched),
// and the backend's basics (Allocate, copies, Describe); packed_gemm_test.cc covers packed B.
// DISABLED_Benchmark measures throughput, plain against packed B:
//   bazel build //tests/unit/kernels:gemm_test && bazel-bin/tests/unit/kernels/gemm_test
//     --gtest_also_run_disabled_tests --gtest_filter='*Benchmark*'
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
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
#include "tests/unit/kernels/gemm_test_util.h"

namespace moe::testing {
namespace {

class GemmTest : public GemmBackendsTest {};

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

// Grouped GEMM with counts instead of offsets (host memory on the CPU): the same bits as the
// offsets, and counts that are negative or do not sum to m are InvalidArgument.
TEST(CpuBackendBasicsTest, GroupedCountsMatchOffsets) {
  CpuBackend backend(CpuBackendOptions{1});
  const int64_t m = 7, n = 5, k = 6, groups = 3;
  std::vector<float> a(m * k), b(groups * k * n), c1(m * n, -1.0f), c2(m * n, -2.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.125f * static_cast<float>(i % 11) - 0.6f;
  const std::vector<int64_t> offsets = {0, 4, 4, 7};
  std::vector<int64_t> counts = {4, 0, 3};
  GroupedGemmArgs args;
  args.gemm.n = n;
  args.gemm.k = k;
  args.gemm.a = a.data();
  args.gemm.lda = k;
  args.gemm.b = b.data();
  args.gemm.ldb = n;
  args.gemm.c = c1.data();
  args.gemm.ldc = n;
  args.num_groups = groups;
  args.stride_b = k * n;
  args.offsets = offsets.data();
  ASSERT_TRUE(backend.GroupedGemm(args).ok());
  args.offsets = nullptr;
  args.counts = counts.data();
  args.gemm.m = m;
  args.gemm.c = c2.data();
  ASSERT_TRUE(backend.GroupedGemm(args).ok());
  EXPECT_EQ(c1, c2);
  args.gemm.m = 6;
  absl::Status st = backend.GroupedGemm(args);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "counts sum to 7, expected m=6")) << st;
  counts = {4, -1, 4};
  args.gemm.m = 7;
  st = backend.GroupedGemm(args);
  EXPECT_TRUE(absl::StrContains(st.message(), "counts[1]=-1 is negative")) << st;
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
}  // namespace moe::testing
