#include "tests/unit/kernels/gemm_test_util.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe::testing {

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

HostMatrix RandomOperand(int64_t rows, int64_t cols, bool trans, int64_t pad, DType dtype,
                         std::mt19937_64& rng) {
  return trans ? RandomMatrix(cols, rows, rows + pad, dtype, rng)
               : RandomMatrix(rows, cols, cols + pad, dtype, rng);
}

double OpAt(const HostMatrix& x, bool trans, int64_t r, int64_t c, int64_t offset_elems) {
  const int64_t i = trans ? c * x.ld + r : r * x.ld + c;
  return x.values[offset_elems + i];
}

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

std::string CaseName(const ::testing::TestParamInfo<DtypeCase>& info) {
  return absl::StrCat(DTypeName(info.param.ab), "_to_", DTypeName(info.param.c));
}

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

void UsePacked(const PackedWeights* packed, int64_t index, GemmArgs* g) {
  g->packed_b = packed;
  g->packed_b_index = index;
  g->b = nullptr;
  g->ldb = 0;
  g->trans_b = !packed->trans_b();
}

std::vector<uint8_t> CheckGemm(Backend& backend, DtypeCase dt, int64_t m, int64_t n, int64_t k,
                               bool trans_a, bool trans_b, int64_t pad, std::mt19937_64& rng,
                               bool packed) {
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

std::vector<uint8_t> CheckBatched(Backend& backend, DtypeCase dt, const BatchedCase& bc,
                                  uint64_t seed, bool packed) {
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

GroupedRun CheckGrouped(Backend& backend, DtypeCase dt, const std::vector<int64_t>& counts,
                        int64_t n, int64_t k, bool trans_b, int64_t pad, bool broadcast_b,
                        uint64_t seed, bool packed) {
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

}  // namespace moe::testing
