// Dispatch: ExpertOrder (a stable counting sort of the slots by expert, and its inverse) and
// GatherRows (routed rows = x[perm / K], optionally scaled), against naive references.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
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

struct Order {
  std::vector<int32_t> sorted_slots;
  std::vector<int32_t> slot_to_row;
};

std::vector<int64_t> Counts(const std::vector<int32_t>& ids, int64_t experts) {
  std::vector<int64_t> c(experts, 0);
  for (int32_t id : ids) ++c[id];
  return c;
}

absl::Status RunOrder(Backend& backend, const std::vector<int32_t>& ids, int64_t experts,
                      const std::vector<int64_t>& counts, Order* out) {
  out->sorted_slots.assign(ids.size(), -5);
  out->slot_to_row.assign(ids.size(), -5);
  ExpertOrderArgs a;
  a.n = static_cast<int64_t>(ids.size());
  a.ids = ids.data();
  a.num_experts = experts;
  a.counts = counts.data();
  a.sorted_slots = out->sorted_slots.data();
  a.slot_to_row = out->slot_to_row.data();
  return backend.ExpertOrder(a);
}

void ExpectStableOrder(const std::vector<int32_t>& ids, const Order& got) {
  std::vector<int32_t> want(ids.size());
  std::iota(want.begin(), want.end(), 0);
  std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  EXPECT_EQ(got.sorted_slots, want);
  for (size_t r = 0; r < want.size(); ++r) EXPECT_EQ(got.slot_to_row[want[r]], r);
}

class DispatchTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

// The counts of MOE_SEMANTICS 7.6 / 7.11, with empty experts between full ones.
TEST_F(DispatchTest, ExpertOrderWithEmptyExperts) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> counts = {0, 3, 5, 1, 0, 7};
  std::vector<int32_t> ids;
  for (int32_t e = 0; e < 6; ++e) ids.insert(ids.end(), counts[e], e);
  std::shuffle(ids.begin(), ids.end(), rng);
  Order got;
  ASSERT_TRUE(RunOrder(one_, ids, 6, counts, &got).ok());
  ExpectStableOrder(ids, got);
  // Rows [0, 3) hold expert 1, [3, 8) expert 2, [8, 9) expert 3, [9, 16) expert 5.
  for (int64_t r = 0; r < 16; ++r) {
    const int32_t want = r < 3 ? 1 : r < 8 ? 2 : r < 9 ? 3 : 5;
    EXPECT_EQ(ids[got.sorted_slots[r]], want) << "row " << r;
  }
}

TEST_F(DispatchTest, ExpertOrderEmpty) {
  Order got;
  EXPECT_TRUE(RunOrder(one_, {}, 6, std::vector<int64_t>(6, 0), &got).ok());
  EXPECT_TRUE(got.sorted_slots.empty());
}

TEST_F(DispatchTest, ExpertOrderRandomAndRepeatedIds) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (auto [n, experts] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {7, 3}, {2048 * 8, 128}, {1000 * 6, 64}, {99, 256}}) {
    SCOPED_TRACE(absl::StrCat("n=", n, " E=", experts));
    std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(experts - 1));
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = d(rng);
    Order a, b;
    ASSERT_TRUE(RunOrder(one_, ids, experts, Counts(ids, experts), &a).ok());
    ASSERT_TRUE(RunOrder(two_, ids, experts, Counts(ids, experts), &b).ok());
    ExpectStableOrder(ids, a);
    EXPECT_EQ(a.sorted_slots, b.sorted_slots);
    EXPECT_EQ(a.slot_to_row, b.slot_to_row);
  }
}

TEST_F(DispatchTest, ExpertOrderRejectsInconsistentInputs) {
  Order got;
  absl::Status s = RunOrder(one_, {0, 0, 1}, 2, {1, 1}, &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "expert_order: counts sum to 2, expected n=3");
  s = RunOrder(one_, {0, 0, 1}, 2, {1, 2}, &got);
  EXPECT_EQ(s.message(), "expert_order: expert 0 occurs more often than counts[0]=1");
  s = RunOrder(one_, {0, 2, 1}, 2, {1, 2}, &got);
  EXPECT_EQ(s.message(), "expert_order: ids[1]=2 is outside [0, num_experts=2)");
  s = RunOrder(one_, {0, -1, 1}, 2, {1, 2}, &got);
  EXPECT_EQ(s.message(), "expert_order: ids[1]=-1 is outside [0, num_experts=2)");
  s = RunOrder(one_, {0, 1, 1}, 2, {-1, 4}, &got);
  EXPECT_EQ(s.message(), "expert_order: counts[0]=-1 is negative or makes the counts exceed n=3");
  EXPECT_TRUE(RunOrder(one_, {0, 1, 1}, 2, {1, 2}, &got).ok());
}

struct GatherCase {
  int64_t tokens, top_k, cols, src_pad, dst_pad;
};

// routed[r] = x[sorted_slots[r] / K] (index_divisor = K), with and without the per-slot scale,
// against an exact emulation (fp32 product, one rounding) and a float64 reference.
TEST_F(DispatchTest, GatherRowsByTokenWithDivisorK) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const GatherCase& c : std::vector<GatherCase>{{1, 1, 1, 0, 0},
                                                       {5, 3, 7, 2, 1},
                                                       {64, 8, 256, 0, 0},
                                                       {33, 6, 129, 3, 0},
                                                       {512, 8, 1024, 0, 8}}) {
      for (bool scaled : {false, true}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " T=", c.tokens, " K=", c.top_k,
                                  " cols=", c.cols, scaled ? " scaled" : ""));
        const int64_t slots = c.tokens * c.top_k;
        const int64_t src_ld = c.cols + c.src_pad;
        const int64_t dst_ld = c.cols + c.dst_pad;
        const std::vector<double> x = RoundTo(RandomUniform(c.tokens * src_ld, rng), dtype);
        const std::vector<uint8_t> x_raw = Encode(x, dtype);
        std::vector<int32_t> perm(slots);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        std::vector<float> scale(slots);
        for (float& s : scale) s = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
        GatherRowsArgs a;
        a.rows = slots;
        a.cols = c.cols;
        a.dtype = dtype;
        a.src = x_raw.data();
        a.src_ld = src_ld;
        a.src_rows = c.tokens;
        a.index = perm.data();
        a.index_divisor = c.top_k;
        a.slot_scale = scaled ? scale.data() : nullptr;
        const std::vector<double> sentinel(slots * dst_ld, 77.0);
        std::vector<uint8_t> out1 = Encode(sentinel, dtype), out2 = out1;
        a.dst = out1.data();
        a.dst_ld = dst_ld;
        ASSERT_TRUE(one_.GatherRows(a).ok());
        a.dst = out2.data();
        ASSERT_TRUE(two_.GatherRows(a).ok());
        ASSERT_EQ(out1, out2);
        const std::vector<double> got = Decode(out1.data(), slots * dst_ld, dtype);
        std::vector<double> got_rows, want_exact, want64;
        for (int64_t r = 0; r < slots; ++r) {
          const int64_t t = perm[r] / c.top_k;
          for (int64_t j = 0; j < dst_ld; ++j) {
            if (j >= c.cols) {
              ASSERT_EQ(got[r * dst_ld + j], 77.0) << "padding written";
              continue;
            }
            const double v = x[t * src_ld + j];
            const double s = scaled ? scale[perm[r]] : 1.0;
            got_rows.push_back(got[r * dst_ld + j]);
            want64.push_back(v * s);
            want_exact.push_back(static_cast<float>(v * s));  // exact product, fp32 rounding
          }
        }
        want_exact = RoundTo(want_exact, dtype);
        EXPECT_EQ(got_rows, want_exact);
        EXPECT_LE(MaxRelError(got_rows, want64), OpTol(dtype));
      }
    }
  }
}

TEST_F(DispatchTest, GatherRowsF16IsARawCopyOrOneRounding) {
  std::vector<f16> src = {FloatToF16(1.5f), FloatToF16(-2.0f), FloatToF16(0.1f),
                          FloatToF16(65504.0f)};
  std::vector<f16> dst(4);
  const std::vector<int32_t> index = {1, 0};
  const std::vector<float> scale = {3.0f, 0.5f};
  GatherRowsArgs a;
  a.rows = 2;
  a.cols = 2;
  a.dtype = DType::kF16;
  a.src = src.data();
  a.src_ld = 2;
  a.src_rows = 2;
  a.index = index.data();
  a.dst = dst.data();
  a.dst_ld = 2;
  ASSERT_TRUE(one_.GatherRows(a).ok());
  for (int j = 0; j < 2; ++j) {
    EXPECT_EQ(dst[j].bits, src[2 + j].bits);
    EXPECT_EQ(dst[2 + j].bits, src[j].bits);
  }
  a.slot_scale = scale.data();
  ASSERT_TRUE(one_.GatherRows(a).ok());
  EXPECT_EQ(dst[0].bits, FloatToF16(F16ToFloat(src[2]) * 0.5f).bits);
  EXPECT_EQ(dst[1].bits, FloatToF16(65504.0f * 0.5f).bits);
  EXPECT_EQ(dst[2].bits, FloatToF16(1.5f * 3.0f).bits);
}

// A source row outside [0, src_rows) is an error naming the index, before anything is written.
TEST_F(DispatchTest, GatherRowsRejectsOutOfRangeSourceRows) {
  std::vector<float> src(3 * 2, 1.0f), dst(4 * 2, 5.0f);
  GatherRowsArgs a;
  a.rows = 4;
  a.cols = 2;
  a.src = src.data();
  a.src_ld = 2;
  a.src_rows = 3;
  a.index_divisor = 2;
  a.dst = dst.data();
  a.dst_ld = 2;
  std::vector<int32_t> index = {0, 1, 5, 4};  // 5 / 2 = 2: the last row, limit - 1
  a.index = index.data();
  EXPECT_TRUE(one_.GatherRows(a).ok());
  index[3] = 6;  // row 3 = src_rows: the limit
  std::fill(dst.begin(), dst.end(), 5.0f);
  absl::Status s = one_.GatherRows(a);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "gather_rows: index[3]=6 / index_divisor=2 is outside the source rows [0, "
            "src_rows=3)");
  EXPECT_EQ(dst, std::vector<float>(8, 5.0f));
  index[3] = -1;  // -1 / 2 would truncate to row 0
  s = two_.GatherRows(a);
  EXPECT_EQ(s.message(),
            "gather_rows: index[3]=-1 / index_divisor=2 is outside the source rows [0, "
            "src_rows=3)");
}

}  // namespace
}  // namespace moe
