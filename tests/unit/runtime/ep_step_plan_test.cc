// The expert-parallel step plan: a rank's part of a plan whose block ids and slots are global
// over the ranks' pools comes out local to the rank's cache, and an id or slot of another
// rank's pool in its rows is refused naming the field.
#include "engine/runtime/ep_step_plan.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Two sequences, one per rank, with pools of 4 blocks of 2 slots: sequence 0 (rank 0) in blocks
// 1 and 2, sequence 1 (rank 1) in block 5 (rank 1's local block 1).
ModelBatch TwoRankBatch() {
  ModelBatch b;
  b.token_ids = {7, 8, 9, 10};
  b.positions = {2, 3, 0, 1};
  b.seq_ids = {0, 0, 1, 1};
  b.slot_mapping = {4, 5, 10, 11};
  b.num_seqs = 2;
  b.max_blocks_per_seq = 2;
  b.block_tables = {1, 2, 5, -1};
  b.logit_rows = {1, 3};
  return b;
}

TEST(EpStepPlanTest, RankPartsAreLocalToTheirPools) {
  auto plan = EncodeStepPlan(TwoRankBatch(), {0, 1}, /*num_blocks=*/4, /*block_size=*/2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto zero = LocalPart(plan->header, plan->words, 0, 2);
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_THAT(zero->batch.block_tables, ElementsAre(1, 2));
  EXPECT_THAT(zero->batch.slot_mapping, ElementsAre(4, 5));
  auto one = LocalPart(plan->header, plan->words, 1, 2);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(one->batch.block_tables, ElementsAre(1, -1));
  EXPECT_THAT(one->batch.slot_mapping, ElementsAre(2, 3));
  EXPECT_THAT(one->batch.token_ids, ElementsAre(9, 10));
}

TEST(EpStepPlanTest, AnotherRanksBlockIsRefused) {
  ModelBatch b = TwoRankBatch();
  b.block_tables = {1, 6, 5, -1};  // rank 0's row names rank 1's block 6
  auto plan = EncodeStepPlan(b, {0, 1}, 4, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT(LocalPart(plan->header, plan->words, 0, 2).status().message(),
              HasSubstr("block_tables[0, 1]=6 is outside rank 0's blocks [0, 4)"));
  b = TwoRankBatch();
  b.slot_mapping = {4, 5, 2, 11};  // rank 1's token written into rank 0's slot 2
  plan = EncodeStepPlan(b, {0, 1}, 4, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT(LocalPart(plan->header, plan->words, 1, 2).status().message(),
              HasSubstr("slot_mapping[2]=2 is outside rank 1's slots"));
}

}  // namespace
}  // namespace moe
