// Bincount: exact integer counts (MOE_SEMANTICS 7.1, 7.10), the error for an id out of range,
// and bit identity across threads and runs.
#include <cstdint>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"

namespace moe {
namespace {

using ::moe::testing::TestSeed;

absl::Status Count(Backend& backend, const std::vector<int32_t>& ids, int64_t bins,
                   std::vector<int64_t>* counts) {
  counts->assign(bins, -99);  // stale values must be overwritten
  BincountArgs a;
  a.n = static_cast<int64_t>(ids.size());
  a.ids = ids.data();
  a.num_bins = bins;
  a.counts = counts->data();
  return backend.Bincount(a);
}

std::vector<int64_t> Reference(const std::vector<int32_t>& ids, int64_t bins) {
  std::vector<int64_t> c(bins, 0);
  for (int32_t id : ids) ++c[id];
  return c;
}

std::vector<int32_t> RandomIds(int64_t n, int64_t bins, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(bins - 1));
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = d(rng);
  return ids;
}

class BincountTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

// 7.1 (a): a float32 histogram would give 16777216 or 16777220.
TEST_F(BincountTest, ExactAbove2To24) {
  const std::vector<int32_t> ids((int64_t{1} << 24) + 3, 0);
  for (Backend* b : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
    std::vector<int64_t> counts;
    ASSERT_TRUE(Count(*b, ids, 8, &counts).ok());
    EXPECT_EQ(counts[0], 16777219);
    for (int64_t e = 1; e < 8; ++e) EXPECT_EQ(counts[e], 0);
  }
}

// 7.1 (b) and (c): E=256, T=8192, K=8 against a reference; 100 repeats give the same counts,
// with 1 and 2 threads.
TEST_F(BincountTest, RandomMatchesReferenceAndRepeats) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const std::vector<int32_t> ids = RandomIds(8192 * 8, 256, rng);
  const std::vector<int64_t> want = Reference(ids, 256);
  std::vector<int64_t> first;
  ASSERT_TRUE(Count(one_, ids, 256, &first).ok());
  EXPECT_EQ(first, want);
  for (int rep = 0; rep < 100; ++rep) {
    std::vector<int64_t> counts;
    ASSERT_TRUE(Count(rep % 2 ? one_ : two_, ids, 256, &counts).ok());
    ASSERT_EQ(counts, first) << "repeat " << rep;
  }
}

TEST_F(BincountTest, OddAndRoundSizes) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (int64_t n : {0, 1, 7, 64, 1000, 65536, 100003, 1 << 20}) {
    for (int64_t bins : {1, 3, 8, 128, 1000, 70000}) {
      SCOPED_TRACE(absl::StrCat("n=", n, " bins=", bins));
      const std::vector<int32_t> ids = RandomIds(n, bins, rng);
      const std::vector<int64_t> want = Reference(ids, bins);
      std::vector<int64_t> a, b;
      ASSERT_TRUE(Count(one_, ids, bins, &a).ok());
      ASSERT_TRUE(Count(two_, ids, bins, &b).ok());
      EXPECT_EQ(a, want);
      EXPECT_EQ(b, want);
    }
  }
}

// The error names the first bad position, its id and num_bins, whatever the thread split: the
// bad ids sit in different threads' parts (n / 4 in the first half, 3n / 4 in the second).
TEST_F(BincountTest, IdOutOfRangeNamesPositionIdAndBins) {
  for (int64_t n : {16, 1 << 20}) {
    for (Backend* b : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
      SCOPED_TRACE(absl::StrCat("n=", n));
      std::vector<int32_t> ids(n, 7);  // limit - 1: fine
      std::vector<int64_t> counts;
      ASSERT_TRUE(Count(*b, ids, 8, &counts).ok());
      EXPECT_EQ(counts[7], n);
      ids[n / 4] = -1;
      ids[3 * n / 4] = 9;  // limit + 1
      ids[n - 1] = 8;      // limit
      absl::Status s = Count(*b, ids, 8, &counts);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(s.message(),
                absl::StrCat("bincount: ids[", n / 4, "]=-1 is outside [0, num_bins=8)"));
      ids[n / 4] = 0;
      s = Count(*b, ids, 8, &counts);
      EXPECT_EQ(s.message(),
                absl::StrCat("bincount: ids[", 3 * n / 4, "]=9 is outside [0, num_bins=8)"));
      ids[3 * n / 4] = 0;
      s = Count(*b, ids, 8, &counts);
      EXPECT_EQ(s.message(),
                absl::StrCat("bincount: ids[", n - 1, "]=8 is outside [0, num_bins=8)"));
    }
  }
}

// 7.10: force-balanced routing with K > E repeats ids within a token; bincount counts every
// dispatched slot ([3, 3]; a one-hot per-token count would give [2, 2]).
TEST_F(BincountTest, RepeatedIdsFromForceBalancedRouting) {
  std::vector<float> logits(4, 0.0f);
  std::vector<int32_t> ids(6);
  std::vector<float> weights(6);
  RouterArgs r;
  r.tokens = 2;
  r.num_experts = 2;
  r.top_k = 3;
  r.logits = logits.data();
  r.force_balanced = true;
  r.ids = ids.data();
  r.weights = weights.data();
  ASSERT_TRUE(one_.Router(r).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 0, 1, 0, 1}));
  std::vector<int64_t> counts;
  ASSERT_TRUE(Count(one_, ids, 2, &counts).ok());
  EXPECT_EQ(counts, (std::vector<int64_t>{3, 3}));
}

}  // namespace
}  // namespace moe
