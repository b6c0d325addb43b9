// ExpertPlacement (even, uneven, more ranks than experts) and SequenceShard (MOE_SEMANTICS 7.7).
#include <set>

#include "engine/dist/expert_placement.h"
#include "engine/dist/sequence_shard.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

std::vector<std::pair<int64_t, int64_t>> Ranges(int64_t e, int p) {
  const ExpertPlacement placement = ExpertPlacement::Create(e, p).value();
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int r = 0; r < p; ++r)
    out.emplace_back(placement.RangeOf(r).first, placement.RangeOf(r).end());
  return out;
}

TEST(ExpertPlacementTest, RangesEvenUnevenAndEmpty) {
  using R = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(Ranges(8, 2), (R{{0, 4}, {4, 8}}));
  EXPECT_EQ(Ranges(8, 4), (R{{0, 2}, {2, 4}, {4, 6}, {6, 8}}));
  EXPECT_EQ(Ranges(5, 2), (R{{0, 2}, {2, 5}}));
  EXPECT_EQ(Ranges(6, 4), (R{{0, 1}, {1, 3}, {3, 4}, {4, 6}}));
  EXPECT_EQ(Ranges(2, 4), (R{{0, 0}, {0, 1}, {1, 1}, {1, 2}}));
  EXPECT_EQ(Ranges(3, 1), (R{{0, 3}}));
}

TEST(ExpertPlacementTest, OwnerIsTheInverseOfTheRanges) {
  for (int64_t e : {1, 2, 5, 6, 8, 64, 257}) {
    for (int p : {1, 2, 3, 4, 7, 8, 16}) {
      const ExpertPlacement placement = ExpertPlacement::Create(e, p).value();
      for (int64_t x = 0; x < e; ++x) {
        const ExpertOwner owner = placement.OwnerOf(x);
        const ExpertRange range = placement.RangeOf(owner.rank);
        ASSERT_GE(x, range.first) << "E=" << e << " P=" << p << " expert " << x;
        ASSERT_LT(x, range.end()) << "E=" << e << " P=" << p << " expert " << x;
        ASSERT_EQ(owner.local_index, x - range.first);
      }
    }
  }
}

TEST(ExpertPlacementTest, RejectsEmptySizes) {
  EXPECT_EQ(ExpertPlacement::Create(0, 2).status().message(),
            "placement: num_experts=0 must be at least 1");
  EXPECT_EQ(ExpertPlacement::Create(8, 0).status().message(),
            "placement: ranks=0 must be at least 1");
  EXPECT_TRUE(ExpertPlacement::Create(1, 1).ok());
}

std::vector<int64_t> Globals(int64_t b, int64_t l, int p, int r) {
  const SequenceShard shard = SequenceShard::Create(b, l, p, r).value();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < shard.local_tokens(); ++i) out.push_back(shard.GlobalIndex(i));
  return out;
}

// 7.7: B=2, L=4, SP=2: rank 0 holds {0, 1, 4, 5}, rank 1 {2, 3, 6, 7}; local 2 on rank 0 is
// 4 (the old formula gave 2), local 0 on rank 1 is 2 (it gave 4).
TEST(SequenceShardTest, BatchAwareGlobalIndex) {
  EXPECT_EQ(Globals(2, 4, 2, 0), (std::vector<int64_t>{0, 1, 4, 5}));
  EXPECT_EQ(Globals(2, 4, 2, 1), (std::vector<int64_t>{2, 3, 6, 7}));
}

// L=7 over 4 ranks: slices of 1, 2, 2, 2 positions; every token exactly once, none past B*L.
TEST(SequenceShardTest, UnevenSlicesCoverEveryTokenOnce) {
  for (int64_t b : {1, 2, 3}) {
    std::multiset<int64_t> seen;
    for (int r = 0; r < 4; ++r) {
      for (int64_t g : Globals(b, 7, 4, r)) seen.insert(g);
    }
    ASSERT_EQ(static_cast<int64_t>(seen.size()), b * 7);
    for (int64_t g = 0; g < b * 7; ++g) EXPECT_EQ(seen.count(g), 1u) << g;
  }
  EXPECT_EQ(SequenceShard::Create(2, 7, 4, 0).value().slice_length(), 1);
  EXPECT_EQ(SequenceShard::Create(2, 7, 4, 3).value().slice_start(), 5);
  EXPECT_EQ(SequenceShard::Create(2, 3, 4, 0).value().local_tokens(), 0);  // P > L: empty
}

TEST(SequenceShardTest, RejectsBadArguments) {
  EXPECT_EQ(SequenceShard::Create(2, 4, 2, 2).status().message(),
            "sequence_shard: rank=2 is outside [0, ranks=2)");
  EXPECT_EQ(SequenceShard::Create(-1, 4, 2, 0).status().message(),
            "sequence_shard: batch=-1 length=4 must not be negative");
}

}  // namespace
}  // namespace moe
