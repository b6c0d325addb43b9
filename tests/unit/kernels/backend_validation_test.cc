// The argument validation of kernels/backend.cc, op by op: each check rejects at the exact limit
// with InvalidArgument naming the op, the field and the numbers, and accepts the limit itself;
// zero-sized work returns OK without touching memory; unsupported dtypes are Unimplemented.
//
// Only validation is exercised: a rejected call never reaches the backend's Run* method, and
// accepted calls are built to return before it (zero-sized work, or a later check that fails
// on purpose and names a different field). GEMMs, whose Run* is this file's owner's, also run
// for real at the accepted limits.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/registry.h"

namespace moe {
namespace {

// InvalidArgument (or `code`) whose message contains every piece.
void ExpectError(const absl::Status& s, std::initializer_list<absl::string_view> pieces,
                 absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  EXPECT_EQ(s.code(), code) << s;
  for (absl::string_view piece : pieces) {
    EXPECT_TRUE(absl::StrContains(s.message(), piece)) << "'" << piece << "' missing in: " << s;
  }
}

// Passed validation of `field`: OK, or an error that is about something else.
void ExpectPassed(const absl::Status& s, absl::string_view field) {
  if (s.ok()) return;
  EXPECT_FALSE(absl::StrContains(s.message(), absl::StrCat(field, "="))) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), absl::StrCat(field, " "))) << s;
}

class BackendValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device::Cpu(), {2});
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(*b);
  }

  // A valid f32 GEMM C[m, n] = A[m, k] B[k, n] over buffers big enough for any ld used here.
  GemmArgs Gemm(int64_t m, int64_t n, int64_t k) {
    GemmArgs g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a_.data();
    g.lda = k;
    g.b = b_.data();
    g.ldb = n;
    g.c = c_.data();
    g.ldc = n;
    return g;
  }

  std::unique_ptr<Backend> backend_;
  std::vector<float> a_ = std::vector<float>(4096, 1.0f);
  std::vector<float> b_ = std::vector<float>(4096, 1.0f);
  std::vector<float> c_ = std::vector<float>(4096, 0.0f);
};

// ---------------------------------------------------------------------------------------------
// gemm

TEST_F(BackendValidationTest, GemmNegativeDims) {
  for (const char* field : {"m", "n", "k"}) {
    GemmArgs g = Gemm(2, 3, 4);
    int64_t* v = field[0] == 'm' ? &g.m : field[0] == 'n' ? &g.n : &g.k;
    *v = -1;
    ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat(field, "=-1 is negative")});
    *v = 0;
    EXPECT_TRUE(backend_->Gemm(g).ok()) << field;
  }
}

TEST_F(BackendValidationTest, GemmLeadingDimsAtTheLimit) {
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      SCOPED_TRACE(absl::StrCat("trans_a=", trans_a, " trans_b=", trans_b));
      const int64_t m = 5, n = 6, k = 7;
      const int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
      GemmArgs g = Gemm(m, n, k);
      g.trans_a = trans_a;
      g.trans_b = trans_b;
      g.ldb = b_cols;
      g.lda = a_cols - 1;
      ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat("lda=", a_cols - 1),
                                      absl::StrCat("row length ", a_cols)});
      g.lda = a_cols;
      EXPECT_TRUE(backend_->Gemm(g).ok());
      g.lda = a_cols + 1;
      EXPECT_TRUE(backend_->Gemm(g).ok());
      g.ldb = b_cols - 1;
      ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat("ldb=", b_cols - 1),
                                      absl::StrCat("row length ", b_cols)});
      g.ldb = b_cols;
      g.ldc = n - 1;
      ExpectError(backend_->Gemm(g),
                  {"gemm: ", absl::StrCat("ldc=", n - 1), absl::StrCat("row length ", n)});
      g.ldc = n;
      EXPECT_TRUE(backend_->Gemm(g).ok());
    }
  }
}

TEST_F(BackendValidationTest, GemmNullPointers) {
  for (const char* field : {"a", "b", "c"}) {
    GemmArgs g = Gemm(2, 3, 4);
    if (field[0] == 'a') g.a = nullptr;
    if (field[0] == 'b') g.b = nullptr;
    if (field[0] == 'c') g.c = nullptr;
    ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat(field, " is null")});
  }
  // k = 0 still writes C, so it still needs the pointers.
  GemmArgs g = Gemm(2, 3, 0);
  g.c = nullptr;
  ExpectError(backend_->Gemm(g), {"gemm: c is null"});
}

TEST_F(BackendValidationTest, GemmUnsupportedDtypesAreUnimplemented) {
  GemmArgs g = Gemm(2, 3, 4);
  g.b_dtype = DType::kBF16;
  ExpectError(backend_->Gemm(g), {"gemm: ", "a_dtype=f32", "b_dtype=bf16"},
              absl::StatusCode::kUnimplemented);
  for (DType t : {DType::kF16, DType::kI32, DType::kI64, DType::kU8}) {
    g = Gemm(2, 3, 4);
    g.a_dtype = g.b_dtype = t;
    ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat("a_dtype=", DTypeName(t))},
                absl::StatusCode::kUnimplemented);
    g = Gemm(2, 3, 4);
    g.c_dtype = t;
    ExpectError(backend_->Gemm(g), {"gemm: ", absl::StrCat("c_dtype=", DTypeName(t))},
                absl::StatusCode::kUnimplemented);
  }
}

TEST_F(BackendValidationTest, GemmZeroOutputsTouchNothing) {
  for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 3}, {2, 0}, {0, 0}}) {
    GemmArgs g = Gemm(m, n, 4);
    g.a = nullptr;
    g.b = nullptr;
    g.c = nullptr;
    EXPECT_TRUE(backend_->Gemm(g).ok()) << m << "x" << n;
  }
}

// ---------------------------------------------------------------------------------------------
// batched_gemm

TEST_F(BackendValidationTest, BatchedNegativeBatchAndShapes) {
  BatchedGemmArgs args;
  args.gemm = Gemm(2, 3, 4);
  args.batch = -1;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: batch=-1 is negative"});
  args.batch = 0;
  args.gemm.a = args.gemm.b = nullptr;
  args.gemm.c = nullptr;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());  // nothing to do, nothing touched
  args.gemm = Gemm(2, 3, 4);
  args.batch = 1;
  args.gemm.ldc = 2;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "ldc=2", "row length 3"});
  args.gemm.ldc = 3;
  args.gemm.m = -1;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: m=-1 is negative"});
  args.gemm.m = 0;  // zero outputs: the null pointers below are never used
  args.batch = 5;
  args.gemm.c = nullptr;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
  args.gemm.m = 2;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: c is null"});
}

TEST_F(BackendValidationTest, BatchedStridesAtTheLimit) {
  // A is 2x4 in a row of lda=5: one matrix spans (2-1)*5+4 = 9 elements; B 4x3 with ldb=3: 12;
  // C 2x3 with ldc=4: 7.
  BatchedGemmArgs args;
  args.gemm = Gemm(2, 3, 4);
  args.gemm.lda = 5;
  args.gemm.ldc = 4;
  args.batch = 3;
  args.stride_a = 9;
  args.stride_b = 12;
  args.stride_c = 7;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
  args.stride_a = 8;
  ExpectError(backend_->BatchedGemm(args),
              {"batched_gemm: ", "stride_a=8", "neither 0 nor", "(9 elements)"});
  args.stride_a = 0;  // one A for every matrix
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
  args.stride_b = 11;
  ExpectError(backend_->BatchedGemm(args),
              {"batched_gemm: ", "stride_b=11", "neither 0 nor", "(12 elements)"});
  args.stride_b = 0;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
  args.stride_c = 6;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "stride_c=6", "(7 elements)"});
  args.stride_c = 0;  // outputs may not overlap
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "stride_c=0", "(7 elements)"});
  // Transposed operands: A stored [k=4, m=2] with lda=2 spans 8, B stored [n=3, k=4] spans 12.
  args.gemm.trans_a = true;
  args.gemm.lda = 2;
  args.gemm.trans_b = true;
  args.gemm.ldb = 4;
  args.stride_c = 7;
  args.stride_a = 7;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "stride_a=7", "(8 elements)"});
  args.stride_a = 8;
  args.stride_b = 11;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "stride_b=11", "(12 elements)"});
  args.stride_b = 12;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
  // One matrix: strides are not used, so not checked.
  args.batch = 1;
  args.stride_a = args.stride_b = 1;
  args.stride_c = 0;
  EXPECT_TRUE(backend_->BatchedGemm(args).ok());
}

TEST_F(BackendValidationTest, BatchedUnsupportedDtypesAreUnimplemented) {
  BatchedGemmArgs args;
  args.gemm = Gemm(2, 3, 4);
  args.batch = 2;
  args.stride_a = 8;
  args.stride_b = 12;
  args.stride_c = 6;
  args.gemm.c_dtype = DType::kF16;
  ExpectError(backend_->BatchedGemm(args), {"batched_gemm: ", "c_dtype=f16"},
              absl::StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------------------------
// grouped_gemm

class GroupedValidationTest : public BackendValidationTest {
 protected:
  GroupedGemmArgs Grouped(const std::vector<int64_t>& offsets) {
    offsets_ = offsets;
    GroupedGemmArgs args;
    args.gemm = Gemm(0, 3, 4);
    args.num_groups = static_cast<int64_t>(offsets_.size()) - 1;
    args.offsets = offsets_.data();
    args.stride_b = 12;
    return args;
  }
  std::vector<int64_t> offsets_;
};

TEST_F(GroupedValidationTest, TransposedAIsRejected) {
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.gemm.trans_a = true;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: trans_a must be false"});
}

TEST_F(GroupedValidationTest, MIsIgnored) {
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.gemm.m = -7;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
}

TEST_F(GroupedValidationTest, LeadingDimsAtTheLimit) {
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.gemm.lda = 3;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "lda=3", "row length 4"});
  args.gemm.lda = 4;
  args.gemm.ldb = 2;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "ldb=2", "row length 3"});
  args.gemm.trans_b = true;  // B stored [n=3, k=4]
  args.gemm.ldb = 3;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "ldb=3", "row length 4"});
  args.gemm.ldb = 4;
  args.gemm.ldc = 2;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "ldc=2", "row length 3"});
  args.gemm.ldc = 3;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
}

TEST_F(GroupedValidationTest, NumGroupsAndOffsets) {
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.num_groups = -1;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: num_groups=-1 is negative"});
  args.num_groups = 0;
  args.offsets = nullptr;  // no groups: nothing is read
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args.num_groups = 2;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: offsets is null"});

  args = Grouped({1, 2, 3});
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: offsets[0]=1, expected 0"});
  args = Grouped({0, 3, 2});
  ExpectError(backend_->GroupedGemm(args),
              {"grouped_gemm: offsets[2]=2 is less than offsets[1]=3"});
  args = Grouped({0, 3, 3, 3});  // equal offsets: an empty group
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args = Grouped({0, -1});
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: offsets[1]=-1 is less than"});
}

// Group sizes in backend memory instead of host offsets: M comes from gemm.m then.
TEST_F(GroupedValidationTest, CountsInsteadOfOffsets) {
  const std::vector<int64_t> counts = {2, 1};
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.counts = counts.data();
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: offsets and counts are both set"});
  args.offsets = nullptr;
  args.gemm.m = -1;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: m=-1 is negative"});
  args.gemm.m = 3;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args.gemm.c = nullptr;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: c is null"});
  args.gemm.m = 0;  // no rows: nothing is read
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
}

TEST_F(GroupedValidationTest, AllEmptyTouchesNothing) {
  GroupedGemmArgs args = Grouped({0, 0, 0, 0});
  args.gemm.a = nullptr;
  args.gemm.b = nullptr;
  args.gemm.c = nullptr;
  args.stride_b = 1;  // not checked: no rows
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args = Grouped({0, 2, 3});
  args.gemm.n = 0;
  args.gemm.ldb = 0;
  args.gemm.ldc = 0;
  args.gemm.c = nullptr;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
}

TEST_F(GroupedValidationTest, NullPointersWithRows) {
  for (const char* field : {"a", "b", "c"}) {
    GroupedGemmArgs args = Grouped({0, 2, 3});
    if (field[0] == 'a') args.gemm.a = nullptr;
    if (field[0] == 'b') args.gemm.b = nullptr;
    if (field[0] == 'c') args.gemm.c = nullptr;
    ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", absl::StrCat(field, " is null")});
  }
}

TEST_F(GroupedValidationTest, StrideBAtTheLimit) {
  GroupedGemmArgs args = Grouped({0, 2, 3});  // B 4x3, ldb=3: spans 12
  args.stride_b = 11;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "stride_b=11", "(12 elements)"});
  args.stride_b = 12;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args.stride_b = 0;  // one B for every group
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
  args = Grouped({0, 3});  // one group: the stride is not used
  args.stride_b = 1;
  EXPECT_TRUE(backend_->GroupedGemm(args).ok());
}

TEST_F(GroupedValidationTest, UnsupportedDtypesAreUnimplemented) {
  GroupedGemmArgs args = Grouped({0, 2, 3});
  args.gemm.a_dtype = args.gemm.b_dtype = DType::kI32;
  ExpectError(backend_->GroupedGemm(args), {"grouped_gemm: ", "a_dtype=i32"},
              absl::StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------------------------
// router: every check precedes the tokens == 0 return, so accepted limits return OK.

RouterArgs Router(int64_t num_experts, int64_t top_k) {
  RouterArgs r;
  r.tokens = 0;
  r.num_experts = num_experts;
  r.top_k = top_k;
  return r;
}

TEST_F(BackendValidationTest, RouterCounts) {
  RouterArgs r = Router(8, 2);
  r.tokens = -1;
  ExpectError(backend_->Router(r), {"router: tokens=-1 is negative"});
  r = Router(0, 1);
  ExpectError(backend_->Router(r), {"router: num_experts=0 must be positive"});
  r = Router(1, 1);
  EXPECT_TRUE(backend_->Router(r).ok());
  r = Router(8, 0);
  ExpectError(backend_->Router(r), {"router: top_k=0 must be positive"});
  r = Router(8, 9);
  ExpectError(backend_->Router(r), {"router: top_k=9 exceeds num_experts=8"});
  r = Router(8, 8);
  EXPECT_TRUE(backend_->Router(r).ok());
  r = Router(8, 9);
  r.force_balanced = true;  // ids may repeat within a token
  EXPECT_TRUE(backend_->Router(r).ok());
}

TEST_F(BackendValidationTest, RouterGroups) {
  RouterArgs r = Router(8, 2);
  r.num_groups = 0;
  ExpectError(backend_->Router(r), {"router: num_groups=0 must be positive"});
  r.num_groups = 3;
  ExpectError(backend_->Router(r), {"router: num_experts=8 is not divisible by num_groups=3"});
  r.num_groups = 8;  // one expert per group: no top-2 group score
  r.topk_groups = 4;
  ExpectError(backend_->Router(r), {"router: ", "= 1 experts per group", "at least 2"});
  r.num_groups = 4;  // two per group: the limit
  EXPECT_TRUE(backend_->Router(r).ok());
  r.topk_groups = 0;
  ExpectError(backend_->Router(r), {"router: topk_groups=0 is outside [1, num_groups=4]"});
  r.topk_groups = 5;
  ExpectError(backend_->Router(r), {"router: topk_groups=5 is outside [1, num_groups=4]"});
  r.topk_groups = 1;
  EXPECT_TRUE(backend_->Router(r).ok());  // 1 group of 2 experts holds top_k=2
  r.top_k = 3;
  ExpectError(backend_->Router(r),
              {"router: topk_groups=1 groups of 2 experts hold fewer than top_k=3 experts"});
  r.force_balanced = true;  // selection replaced: groups do not limit it
  EXPECT_TRUE(backend_->Router(r).ok());
  r.force_balanced = false;
  r.topk_groups = 2;
  EXPECT_TRUE(backend_->Router(r).ok());
}

TEST_F(BackendValidationTest, RouterScale) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    RouterArgs r = Router(8, 2);
    r.route_scale = bad;
    ExpectError(backend_->Router(r), {"router: route_scale=", "is not finite"});
  }
  RouterArgs r = Router(8, 2);
  r.route_scale = std::numeric_limits<float>::max();
  EXPECT_TRUE(backend_->Router(r).ok());
}

TEST_F(BackendValidationTest, RouterPointersWithTokens) {
  float logits[8] = {};
  int32_t ids[2];
  float weights[2];
  for (const char* field : {"logits", "ids", "weights"}) {
    RouterArgs r = Router(8, 2);
    r.tokens = 1;
    r.logits = logits;
    r.ids = ids;
    r.weights = weights;
    if (field[0] == 'l') r.logits = nullptr;
    if (field[0] == 'i') r.ids = nullptr;
    if (field[0] == 'w') r.weights = nullptr;
    ExpectError(backend_->Router(r), {"router: ", absl::StrCat(field, " is null")});
  }
}

// ---------------------------------------------------------------------------------------------
// bincount: n = 0 still runs (it writes zero counts), so limits are shown by the next check.

TEST_F(BackendValidationTest, Bincount) {
  int64_t counts[4] = {9, 9, 9, 9};
  BincountArgs a;
  a.n = -1;
  a.num_bins = 4;
  a.counts = counts;
  ExpectError(backend_->Bincount(a), {"bincount: n=-1 is negative"});
  a.n = 0;
  a.num_bins = 0;
  ExpectError(backend_->Bincount(a), {"bincount: num_bins=0 must be positive"});
  a.num_bins = 1;
  a.counts = nullptr;
  ExpectError(backend_->Bincount(a), {"bincount: counts is null"});  // num_bins=1 passed
  a.counts = counts;
  a.n = 3;
  ExpectError(backend_->Bincount(a), {"bincount: ids is null"});
  a.n = 0;  // ids may be null without ids to count
  ExpectPassed(backend_->Bincount(a), "ids");
}

// ---------------------------------------------------------------------------------------------
// expert_order

TEST_F(BackendValidationTest, ExpertOrder) {
  ExpertOrderArgs a;
  a.n = -1;
  a.num_experts = 4;
  ExpectError(backend_->ExpertOrder(a), {"expert_order: n=-1 is negative"});
  a.n = int64_t{INT32_MAX} + 1;
  ExpectError(backend_->ExpertOrder(a),
              {"expert_order: n=2147483648 exceeds the int32 row index limit 2147483647"});
  a.n = INT32_MAX;  // the limit passes; the null ids are what is reported
  ExpectError(backend_->ExpertOrder(a), {"expert_order: ids is null"});
  a.n = 0;
  a.num_experts = 0;
  ExpectError(backend_->ExpertOrder(a), {"expert_order: num_experts=0 must be positive"});
  a.num_experts = 1;
  EXPECT_TRUE(backend_->ExpertOrder(a).ok());  // nothing to order, nothing touched
}

TEST_F(BackendValidationTest, ExpertOrderPointers) {
  int32_t ids[2] = {0, 1}, sorted[2], slot_to_row[2];
  int64_t counts[2] = {1, 1};
  for (const char* field : {"ids", "counts", "sorted_slots", "slot_to_row"}) {
    ExpertOrderArgs a;
    a.n = 2;
    a.num_experts = 2;
    a.ids = ids;
    a.counts = counts;
    a.sorted_slots = sorted;
    a.slot_to_row = slot_to_row;
    const std::string f = field;
    if (f == "ids") a.ids = nullptr;
    if (f == "counts") a.counts = nullptr;
    if (f == "sorted_slots") a.sorted_slots = nullptr;
    if (f == "slot_to_row") a.slot_to_row = nullptr;
    ExpectError(backend_->ExpertOrder(a), {"expert_order: ", absl::StrCat(f, " is null")});
  }
}

// ---------------------------------------------------------------------------------------------
// gather_rows

GatherRowsArgs Gather(int64_t rows, int64_t cols) {
  GatherRowsArgs a;
  a.rows = rows;
  a.cols = cols;
  a.src_ld = cols;
  a.dst_ld = cols;
  return a;
}

TEST_F(BackendValidationTest, GatherRows) {
  GatherRowsArgs a = Gather(-1, 4);
  ExpectError(backend_->GatherRows(a), {"gather_rows: rows=-1 is negative"});
  a = Gather(0, -1);
  a.src_ld = a.dst_ld = 0;
  ExpectError(backend_->GatherRows(a), {"gather_rows: cols=-1 is negative"});
  a = Gather(0, 4);
  a.index_divisor = 0;
  ExpectError(backend_->GatherRows(a), {"gather_rows: index_divisor=0 must be positive"});
  a.index_divisor = 1;
  a.src_ld = 3;
  ExpectError(backend_->GatherRows(a), {"gather_rows: src_ld=3 is less than the row length 4"});
  a.src_ld = 4;
  a.dst_ld = 3;
  ExpectError(backend_->GatherRows(a), {"gather_rows: dst_ld=3 is less than the row length 4"});
  a.dst_ld = 4;
  EXPECT_TRUE(backend_->GatherRows(a).ok());  // zero rows: OK, nothing touched
  a = Gather(3, 0);
  EXPECT_TRUE(backend_->GatherRows(a).ok());
  for (DType t : {DType::kI32, DType::kI64, DType::kU8}) {
    a = Gather(0, 4);
    a.dtype = t;
    ExpectError(backend_->GatherRows(a), {"gather_rows: ", DTypeName(t)},
                absl::StatusCode::kUnimplemented);
  }
}

TEST_F(BackendValidationTest, GatherRowsPointers) {
  float src[8] = {}, dst[8] = {};
  int32_t index[2] = {0, 1};
  for (const char* field : {"src", "index", "dst"}) {
    GatherRowsArgs a = Gather(2, 4);
    a.src = src;
    a.src_rows = 2;
    a.index = index;
    a.dst = dst;
    const std::string f = field;
    if (f == "src") a.src = nullptr;
    if (f == "index") a.index = nullptr;
    if (f == "dst") a.dst = nullptr;
    ExpectError(backend_->GatherRows(a), {"gather_rows: ", absl::StrCat(f, " is null")});
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu

TEST_F(BackendValidationTest, SwiGlu) {
  SwiGluArgs a;
  a.rows = -1;
  ExpectError(backend_->SwiGlu(a), {"swiglu: rows=-1 is negative"});
  a.rows = 0;
  a.inter = -1;
  ExpectError(backend_->SwiGlu(a), {"swiglu: inter=-1 is negative"});
  a.inter = 3;
  a.gate_up_ld = 5;
  a.out_ld = 3;
  ExpectError(backend_->SwiGlu(a), {"swiglu: gate_up_ld=5 is less than the row length 6"});
  a.gate_up_ld = 6;
  a.out_ld = 2;
  ExpectError(backend_->SwiGlu(a), {"swiglu: out_ld=2 is less than the row length 3"});
  a.out_ld = 3;
  EXPECT_TRUE(backend_->SwiGlu(a).ok());  // zero rows: nothing touched
  a.rows = 2;
  ExpectError(backend_->SwiGlu(a), {"swiglu: gate_up is null"});
  float in[12] = {};
  a.gate_up = in;
  ExpectError(backend_->SwiGlu(a), {"swiglu: out is null"});
  for (DType t : {DType::kF16, DType::kI32}) {
    a.dtype = t;
    ExpectError(backend_->SwiGlu(a), {"swiglu: dtype=", DTypeName(t), "(supported: f32, bf16)"},
                absl::StatusCode::kUnimplemented);
  }
}

// ---------------------------------------------------------------------------------------------
// combine

CombineArgs Combine(int64_t tokens, int64_t top_k, int64_t cols) {
  CombineArgs a;
  a.tokens = tokens;
  a.top_k = top_k;
  a.cols = cols;
  a.expert_out_ld = cols;
  a.out_ld = cols;
  return a;
}

TEST_F(BackendValidationTest, Combine) {
  CombineArgs a = Combine(-1, 2, 4);
  ExpectError(backend_->Combine(a), {"combine: tokens=-1 is negative"});
  a = Combine(0, 0, 4);
  ExpectError(backend_->Combine(a), {"combine: top_k=0 must be positive"});
  a = Combine(0, 1, 4);
  EXPECT_TRUE(backend_->Combine(a).ok());
  a = Combine(0, 2, -1);
  a.expert_out_ld = a.out_ld = 0;
  ExpectError(backend_->Combine(a), {"combine: cols=-1 is negative"});
  a = Combine(0, 2, 4);
  a.expert_out_ld = 3;
  ExpectError(backend_->Combine(a), {"combine: expert_out_ld=3 is less than the row length 4"});
  a.expert_out_ld = 4;
  a.out_ld = 3;
  ExpectError(backend_->Combine(a), {"combine: out_ld=3 is less than the row length 4"});
  a.out_ld = 4;
  EXPECT_TRUE(backend_->Combine(a).ok());
  a = Combine(5, 2, 0);
  EXPECT_TRUE(backend_->Combine(a).ok());  // no columns: nothing touched
  a = Combine(0, 2, 4);
  a.dtype = DType::kF16;
  ExpectError(backend_->Combine(a), {"combine: dtype=f16"}, absl::StatusCode::kUnimplemented);
}

TEST_F(BackendValidationTest, CombinePointers) {
  float expert_out[8] = {}, out[4] = {};
  int32_t slot_to_row[2] = {0, 1}, ids[2] = {0, 1};
  for (const char* field : {"expert_out", "slot_to_row", "ids", "out"}) {
    CombineArgs a = Combine(1, 2, 4);
    a.expert_out = expert_out;
    a.slot_to_row = slot_to_row;
    a.ids = ids;
    a.out = out;
    const std::string f = field;
    if (f == "expert_out") a.expert_out = nullptr;
    if (f == "slot_to_row") a.slot_to_row = nullptr;
    if (f == "ids") a.ids = nullptr;
    if (f == "out") a.out = nullptr;
    ExpectError(backend_->Combine(a), {"combine: ", absl::StrCat(f, " is null")});
  }
}

// ---------------------------------------------------------------------------------------------
// scale_rows

ScaleRowsArgs Scale(int64_t rows, int64_t cols) {
  ScaleRowsArgs a;
  a.rows = rows;
  a.cols = cols;
  a.src_ld = cols;
  a.dst_ld = cols;
  return a;
}

TEST_F(BackendValidationTest, ScaleRows) {
  ScaleRowsArgs a = Scale(-1, 4);
  ExpectError(backend_->ScaleRows(a), {"scale_rows: rows=-1 is negative"});
  a = Scale(0, -1);
  a.src_ld = a.dst_ld = 0;
  ExpectError(backend_->ScaleRows(a), {"scale_rows: cols=-1 is negative"});
  a = Scale(0, 4);
  a.src_ld = 3;
  ExpectError(backend_->ScaleRows(a), {"scale_rows: src_ld=3 is less than the row length 4"});
  a.src_ld = 4;
  a.dst_ld = 3;
  ExpectError(backend_->ScaleRows(a), {"scale_rows: dst_ld=3 is less than the row length 4"});
  a.dst_ld = 4;
  EXPECT_TRUE(backend_->ScaleRows(a).ok());
  // In place needs one leading dim.
  float buf[16] = {};
  a.src = buf;
  a.dst = buf;
  a.dst_ld = 5;
  ExpectError(backend_->ScaleRows(a), {"scale_rows: in place with src_ld=4 != dst_ld=5"});
  a.dst_ld = 4;
  EXPECT_TRUE(backend_->ScaleRows(a).ok());  // zero rows
  a.dtype = DType::kI64;
  ExpectError(backend_->ScaleRows(a), {"scale_rows: dtype=i64"}, absl::StatusCode::kUnimplemented);
}

TEST_F(BackendValidationTest, ScaleRowsPointers) {
  float src[8] = {}, dst[8] = {}, scale[2] = {};
  for (const char* field : {"src", "scale", "dst"}) {
    ScaleRowsArgs a = Scale(2, 4);
    a.src = src;
    a.scale = scale;
    a.dst = dst;
    const std::string f = field;
    if (f == "src") a.src = nullptr;
    if (f == "scale") a.scale = nullptr;
    if (f == "dst") a.dst = nullptr;
    ExpectError(backend_->ScaleRows(a), {"scale_rows: ", absl::StrCat(f, " is null")});
  }
}

// ---------------------------------------------------------------------------------------------
// add and cast

TEST_F(BackendValidationTest, Add) {
  AddArgs a;
  a.n = -1;
  ExpectError(backend_->Add(a), {"add: n=-1 is negative"});
  a.n = 0;
  EXPECT_TRUE(backend_->Add(a).ok());  // null pointers, nothing touched
  float x[2] = {};
  for (const char* field : {"a", "b", "out"}) {
    a.n = 2;
    a.a = a.b = x;
    a.out = x;
    const std::string f = field;
    if (f == "a") a.a = nullptr;
    if (f == "b") a.b = nullptr;
    if (f == "out") a.out = nullptr;
    ExpectError(backend_->Add(a), {"add: ", absl::StrCat(f, " is null")});
  }
  a.n = 0;
  a.dtype = DType::kF16;
  ExpectError(backend_->Add(a), {"add: dtype=f16 (supported: f32, bf16)"},
              absl::StatusCode::kUnimplemented);
}

TEST_F(BackendValidationTest, Cast) {
  CastArgs a;
  a.n = -1;
  ExpectError(backend_->Cast(a), {"cast: n=-1 is negative"});
  a.n = 0;
  for (DType from : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (DType to : {DType::kF32, DType::kBF16, DType::kF16}) {
      a.src_dtype = from;
      a.dst_dtype = to;
      EXPECT_TRUE(backend_->Cast(a).ok()) << DTypeName(from) << " -> " << DTypeName(to);
    }
  }
  a.src_dtype = DType::kI32;
  a.dst_dtype = DType::kF32;
  ExpectError(backend_->Cast(a), {"cast: i32 -> f32"}, absl::StatusCode::kUnimplemented);
  a.src_dtype = DType::kF32;
  a.dst_dtype = DType::kU8;
  ExpectError(backend_->Cast(a), {"cast: f32 -> u8"}, absl::StatusCode::kUnimplemented);
  a.dst_dtype = DType::kBF16;
  a.n = 2;
  float x[2] = {};
  a.dst = x;
  ExpectError(backend_->Cast(a), {"cast: src is null"});
  a.src = x;
  a.dst = nullptr;
  ExpectError(backend_->Cast(a), {"cast: dst is null"});
}

}  // namespace
}  // namespace moe
