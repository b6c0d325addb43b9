// MOE_SEMANTICS section 7, routing items, through the whole block: 7.1 (exact counts),
// 7.2 (ties, reproducible routing), 7.3 (bias is selection-only), 7.4 (group score = top-2
// sum), 7.10 (duplicate ids under forced balance). 7.9 is in moe_config_test.
#include <cmath>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

// Runs the block and reads the routing back.
class MoeRoutingTest : public MoeBlockTest {
 protected:
  void Run(MoeBlock* block, const std::vector<double>& x, int64_t tokens, BlockOutput* out,
           std::vector<int32_t>* ids, std::vector<float>* weights) {
    *out = MoeBlockTest::Run(block, x, tokens);
    ASSERT_TRUE(block->CopyLastRouting(ids, weights).ok());
  }
};

// 7.1: counts are exact integers from a bincount, in the trace, summing to T*K, equal to a
// host bincount of the routed ids, and unchanged over 100 runs.
TEST_F(MoeRoutingTest, CountsAreExactBincount) {
  const MoeConfig c = SmallConfig(16, 4, 24, 8, DType::kF32);
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  const int64_t t = 64;
  const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok()) << block.status();
  BlockOutput out;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Run(block->get(), x, t, &out, &ids, &weights);
  std::vector<int64_t> want(16, 0);
  for (int32_t id : ids) ++want[id];
  const std::vector<int64_t> counts = (*block)->last_trace().counts;
  EXPECT_EQ(counts, want);
  for (int32_t id : NaiveRoute(c, w, x, t).ids) --want[id];
  EXPECT_EQ(want, std::vector<int64_t>(16, 0));
  for (int run = 0; run < 100; ++run) {
    BlockOutput again;
    Run(block->get(), x, t, &again, &ids, &weights);
    ASSERT_EQ((*block)->last_trace().counts, counts) << "run " << run;
  }
}

// 7.1 (a): 2^24 + 3 slots to one expert; a float32 histogram would give 2^24 or 2^24 + 4.
TEST_F(MoeRoutingTest, CountsPast2To24AreExact) {
  const MoeConfig c = SmallConfig(2, 1, 1, 1, DType::kBF16);
  NaiveMoeWeights w = RandomWeights(c, rng_);
  w.gate = {1.0, -1.0};  // x = 1 -> logits (1, -1): every token to expert 0
  const int64_t t = (int64_t{1} << 24) + 3;
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok()) << block.status();
  auto got = RunBlock(block->get(), dev_, std::vector<double>(t, 1.0), t);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*block)->last_trace().counts, (std::vector<int64_t>{16777219, 0}));
  EXPECT_EQ((*block)->last_trace().expert_path, ExpertPath::kGrouped);
}

// 7.2 (a): all logits equal -> ids {0, 1, 2}, weights 1/8 (1/3 with renormalisation).
TEST_F(MoeRoutingTest, TiesGoToTheLowerIds) {
  for (bool renorm : {false, true}) {
    SCOPED_TRACE(renorm ? "renormalize" : "plain");
    MoeConfig c = SmallConfig(8, 3, 16, 8, DType::kF32);
    c.renormalize = renorm;
    NaiveMoeWeights w = RandomWeights(c, rng_);
    w.gate.assign(8 * 16, 0.0);
    auto block = MakeBlock(c, w, dev_);
    ASSERT_TRUE(block.ok()) << block.status();
    const int64_t t = 5;
    const std::vector<double> x = RoundTo(RandomUniform(t * 16, rng_), c.dtype);
    BlockOutput out;
    std::vector<int32_t> ids;
    std::vector<float> weights;
    Run(block->get(), x, t, &out, &ids, &weights);
    const float want_w = renorm ? 0.125f / (0.375f + 1e-20f) : 0.125f;
    for (int64_t i = 0; i < t; ++i) {
      EXPECT_EQ(std::vector<int32_t>(ids.begin() + 3 * i, ids.begin() + 3 * i + 3),
                (std::vector<int32_t>{0, 1, 2}));
      for (int k = 0; k < 3; ++k) EXPECT_EQ(weights[3 * i + k], want_w);
    }
    EXPECT_EQ((*block)->last_trace().counts, (std::vector<int64_t>{t, t, t, 0, 0, 0, 0, 0}));
    EXPECT_LE(MaxRelError(out.values, NaiveMoe(c, w, x, t)), BlockTol(c.dtype));
  }
}

// 7.2 (b): DeepSeek-V3-style groups (G=8, limit 4, K=8) with all-equal scores -> groups
// {0,1,2,3}, experts = the 8 lowest ids. Then tied groups: only the lower group is kept.
TEST_F(MoeRoutingTest, GroupTiesGoToTheLowerGroups) {
  MoeConfig c = SmallConfig(64, 8, 16, 8, DType::kF32);
  c.score = ScoreFunction::kSigmoid;
  c.num_groups = 8;
  c.topk_groups = 4;
  c.use_expert_bias = true;
  NaiveMoeWeights w = RandomWeights(c, rng_);
  w.gate.assign(64 * 16, 0.0);
  w.bias.assign(64, 0.0);
  const int64_t t = 3;
  const std::vector<double> x = RoundTo(RandomUniform(t * 16, rng_), c.dtype);
  {
    auto block = MakeBlock(c, w, dev_);
    ASSERT_TRUE(block.ok()) << block.status();
    BlockOutput out;
    std::vector<int32_t> ids;
    std::vector<float> weights;
    Run(block->get(), x, t, &out, &ids, &weights);
    for (int64_t i = 0; i < t * 8; ++i) EXPECT_EQ(ids[i], i % 8);
    for (float v : weights) EXPECT_EQ(v, 0.5f);  // sigmoid(0), unbiased
  }
  // Groups 5 and 6 tie for the best group score (bias 0.25 on two experts each); group 5 wins
  // the only slot (limit 1, K=2): ids {40, 41}.
  c.topk_groups = 1;
  c.top_k = 2;
  for (int j : {40, 41, 48, 49}) w.bias[j] = 0.25;
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok()) << block.status();
  BlockOutput out;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Run(block->get(), x, t, &out, &ids, &weights);
  for (int64_t i = 0; i < t; ++i) {
    EXPECT_EQ(ids[2 * i], 40);
    EXPECT_EQ(ids[2 * i + 1], 41);
  }
}

// 7.2 (c): the same tokens give the same ids, weights and output bits with 1 or 2 threads.
// 7.15 (in part): the same ids, weight bits and output bits whatever batch a token is in (the
// router gate is packed like the experts, and the packed GEMM gives a row the same bits for any
// row count; expert parallelism relies on it).
TEST_F(MoeRoutingTest, RoutingIsReproducibleAcrossThreadsAndBatches) {
  MoeConfig c = SmallConfig(16, 4, 64, 32, DType::kBF16);
  c.score = ScoreFunction::kSigmoid;
  c.use_expert_bias = true;
  c.num_groups = 4;
  c.topk_groups = 2;
  c.renormalize = true;
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  const int64_t t = 256;
  const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
  std::vector<int32_t> ref_ids;
  std::vector<float> ref_weights;
  BlockOutput ref;
  for (int threads : {1, 2}) {
    auto dev = MakeCpuDevice(threads);
    ASSERT_TRUE(dev.ok());
    auto block = MakeBlock(c, w, *dev);
    ASSERT_TRUE(block.ok()) << block.status();
    auto got = RunBlock(block->get(), *dev, x, t);
    ASSERT_TRUE(got.ok()) << got.status();
    std::vector<int32_t> ids;
    std::vector<float> weights;
    ASSERT_TRUE((*block)->CopyLastRouting(&ids, &weights).ok());
    if (threads == 1) {
      ref = *got;
      ref_ids = ids;
      ref_weights = weights;
      continue;
    }
    EXPECT_EQ(ids, ref_ids);
    EXPECT_EQ(weights, ref_weights);
    EXPECT_EQ(got->bytes, ref.bytes);
  }
  // Batches of the test backend against all 256 tokens on the same backend (another backend
  // may round differently; the point is that the batch does not matter).
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok());
  Run(block->get(), x, t, &ref, &ref_ids, &ref_weights);
  for (int64_t batch : {1, 7, 64}) {
    for (int64_t start = 0; start + batch <= t; start += 61) {
      const std::vector<double> part(x.begin() + start * 64, x.begin() + (start + batch) * 64);
      BlockOutput out;
      std::vector<int32_t> ids;
      std::vector<float> weights;
      Run(block->get(), part, batch, &out, &ids, &weights);
      ASSERT_EQ(ids, std::vector<int32_t>(ref_ids.begin() + start * 4,
                                          ref_ids.begin() + (start + batch) * 4))
          << "batch " << batch << " at " << start;
      ASSERT_EQ(weights, std::vector<float>(ref_weights.begin() + start * 4,
                                            ref_weights.begin() + (start + batch) * 4))
          << "batch " << batch << " at " << start;
      const int64_t row = 64 * DTypeSize(c.dtype);
      ASSERT_EQ(out.bytes, std::vector<uint8_t>(ref.bytes.begin() + start * row,
                                                ref.bytes.begin() + (start + batch) * row))
          << "batch " << batch << " at " << start;
    }
  }
}

// 7.3: E=4, K=1, sigmoid scores [0.9, 0.1, 0.1, 0.1], bias [-1, 0, 0, 1] -> id 3, weight 0.1.
TEST_F(MoeRoutingTest, BiasSelectsButDoesNotWeigh) {
  MoeConfig c = SmallConfig(4, 1, 8, 8, DType::kF32);
  c.score = ScoreFunction::kSigmoid;
  c.use_expert_bias = true;
  NaiveMoeWeights w = RandomWeights(c, rng_);
  const double hi = std::log(0.9 / 0.1);  // sigmoid(hi) = 0.9
  w.gate.assign(4 * 8, 0.0);
  for (int j = 0; j < 4; ++j) w.gate[j * 8] = RoundTo({j == 0 ? hi : -hi}, DType::kF32)[0];
  w.bias = {-1.0, 0.0, 0.0, 1.0};
  std::vector<double> x = RoundTo(RandomUniform(8, rng_), c.dtype);
  x[0] = 1.0;
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok()) << block.status();
  BlockOutput out;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Run(block->get(), x, 1, &out, &ids, &weights);
  EXPECT_EQ(ids, std::vector<int32_t>{3});
  EXPECT_NEAR(weights[0], 0.1, 1e-6);
  EXPECT_EQ((*block)->last_trace().counts, (std::vector<int64_t>{0, 0, 0, 1}));
  const std::vector<double> ffn = NaiveFfn(w.w1[3], w.w3[3], w.w2[3], c.inter, x);
  std::vector<double> want(8);
  for (int i = 0; i < 8; ++i) want[i] = 0.1 * ffn[i];
  EXPECT_LE(MaxRelError(out.values, want), BlockTol(c.dtype));
}

// 7.4: E=8, G=4, limit 1, K=2, choice [0.9, 0.0 | 0.5, 0.5 | low...] -> group 1 (sum 1.0)
// beats group 0 (0.9, which holds the best single expert): ids {2, 3}.
TEST_F(MoeRoutingTest, GroupScoreIsTheTopTwoSumIncludingBias) {
  MoeConfig c = SmallConfig(8, 2, 8, 8, DType::kF32);
  c.score = ScoreFunction::kSigmoid;
  c.use_expert_bias = true;
  c.num_groups = 4;
  c.topk_groups = 1;
  NaiveMoeWeights w = RandomWeights(c, rng_);
  w.gate.assign(8 * 8, 0.0);  // scores 0.5; choice = 0.5 + bias
  w.bias = {0.4, -0.5, 0.0, 0.0, -0.4, -0.4, -0.4, -0.4};
  const std::vector<double> x = RoundTo(RandomUniform(2 * 8, rng_), c.dtype);
  auto block = MakeBlock(c, w, dev_);
  ASSERT_TRUE(block.ok()) << block.status();
  BlockOutput out;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Run(block->get(), x, 2, &out, &ids, &weights);
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 3, 2, 3}));
  for (float v : weights) EXPECT_EQ(v, 0.5f);
  EXPECT_LE(MaxRelError(out.values, NaiveMoe(c, w, x, 2)), BlockTol(c.dtype));
}

// 7.10: forced balance with K > E: E=2, K=3, T=2 -> ids [[0,1,0],[1,0,1]]; the bincount gives
// [3, 3] (a one-hot count would give [2, 2]), matching the 6 dispatched rows.
TEST_F(MoeRoutingTest, ForcedBalanceWithRepeatedIds) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    MoeConfig c = SmallConfig(2, 3, 16, 8, dtype);
    c.force_balanced = true;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const std::vector<double> x = RoundTo(RandomUniform(2 * 16, rng_), dtype);
    auto block = MakeBlock(c, w, dev_);
    ASSERT_TRUE(block.ok()) << block.status();
    BlockOutput out;
    std::vector<int32_t> ids;
    std::vector<float> weights;
    Run(block->get(), x, 2, &out, &ids, &weights);
    EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 0, 1, 0, 1}));
    EXPECT_EQ((*block)->last_trace().counts, (std::vector<int64_t>{3, 3}));
    EXPECT_EQ((*block)->last_trace().expert_path, ExpertPath::kBatched);
    EXPECT_LE(MaxRelError(out.values, NaiveMoe(c, w, x, 2)), BlockTol(dtype));
  }
}

}  // namespace
}  // namespace moe::testing
