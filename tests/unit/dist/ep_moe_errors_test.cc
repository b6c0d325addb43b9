// The checks around expert parallelism: MoeBlock's staged calls and expert ranges, EpMoeBlock
// creation, and a rank that stops taking part (its peers get DeadlineExceeded naming the op).
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/dist/ep_moe_block.h"
#include "engine/dist/local_communicator.h"
#include "gtest/gtest.h"
#include "tests/unit/dist/ep_test_util.h"

namespace moe::testing {
namespace {

class EpMoeErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dev = MakeCpuDevice(1);
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(*dev);
    config_ = SmallConfig(8, 2, 16, 8, DType::kBF16);
    std::mt19937_64 rng(7);
    weights_ = RandomWeights(config_, rng);
  }

  // The host weights with experts [first, end) only.
  MoeWeights Slice(int64_t first, int64_t end) {
    MoeWeights w = ToMoeWeights(config_, weights_, &host_);
    const auto cut = [&](std::vector<Tensor>* v) {
      *v = std::vector<Tensor>(v->begin() + first, v->begin() + end);
    };
    cut(&w.w1);
    cut(&w.w3);
    cut(&w.w2);
    return w;
  }

  TestDevice dev_;
  MoeConfig config_;
  NaiveMoeWeights weights_;
  HostTensors host_;
};

TEST_F(EpMoeErrorsTest, ExpertRangeIsChecked) {
  auto create = [&](ExpertRange range, const MoeWeights& w) {
    return MoeBlock::Create(config_, w, range, dev_.backend.get(), dev_.allocator.get()).status();
  };
  EXPECT_TRUE(create({2, 3}, Slice(2, 5)).ok());
  EXPECT_EQ(create({2, 3}, Slice(2, 4)).message(),
            "moe: w1 has 2 tensors, expected 3 (experts [2, 5) of num_experts=8)");
  EXPECT_EQ(create({6, 3}, Slice(6, 8)).message(),
            "moe: experts [6, 9) are outside [0, num_experts=8)");
  EXPECT_EQ(create({0, 8}, Slice(0, 7)).message(), "moe: w1 has 7 tensors, expected num_experts=8");
}

TEST_F(EpMoeErrorsTest, StagedCallsAreChecked) {
  auto block =
      MoeBlock::Create(config_, Slice(4, 8), {4, 4}, dev_.backend.get(), dev_.allocator.get());
  ASSERT_TRUE(block.ok()) << block.status();
  auto x = Upload(dev_, std::vector<double>(2 * 16, 0.5), DType::kBF16, Shape({2, 16}));
  auto out = Upload(dev_, std::vector<double>(2 * 16, 0.0), DType::kBF16, Shape({2, 16}));
  ASSERT_TRUE(x.ok() && out.ok());
  EXPECT_EQ((*block)->Forward(x->tensor, out->tensor).status().message(),
            "moe: Forward needs all num_experts=8 experts; this block holds [4, 8) (an "
            "expert-parallel rank's block runs through BeginForward / FinishForward)");
  EXPECT_EQ((*block)->FinishForward().status().message(),
            "moe: FinishForward without a BeginForward before it");
  EXPECT_EQ((*block)->UpdateExpertWeights(3, nullptr, nullptr, nullptr).message(),
            "moe: expert=3 is outside this block's experts [4, 8)");
  auto dispatch = (*block)->BeginForward(x->tensor, out->tensor);
  ASSERT_TRUE(dispatch.ok()) << dispatch.status();
  EXPECT_EQ(dispatch->rows.dim(0), 4);
  EXPECT_EQ(dispatch->counts.size(), 8u);
  const std::vector<int64_t> counts = {1, 1, 1, 1}, offsets = {0, 1, 2, 3, 3};
  auto scratch = Upload(dev_, std::vector<double>(4 * 16, 0.0), DType::kBF16, Shape({4, 16}));
  ASSERT_TRUE(scratch.ok());
  EXPECT_EQ((*block)
                ->RunExpertGemms(dispatch->rows, counts, offsets, scratch->tensor, scratch->tensor)
                .message(),
            "moe: RunExpertGemms offsets span [0, 3), expected [0, rows=4)");
  EXPECT_EQ(
      (*block)
          ->RunExpertGemms(dispatch->rows, {1, 1, 1}, offsets, scratch->tensor, scratch->tensor)
          .message(),
      "moe: RunExpertGemms got 3 counts and 5 offsets, expected 4 and 5 (experts [4, 8))");
  EXPECT_TRUE((*block)->FinishForward().ok());
}

TEST_F(EpMoeErrorsTest, CreateChecks) {
  auto group = LocalCommunicatorGroup::Create(2);
  ASSERT_TRUE(group.ok());
  Communicator* rank1 = (*group)->rank(1);
  EXPECT_TRUE(
      EpMoeBlock::Create(config_, Slice(4, 8), rank1, dev_.backend.get(), dev_.allocator.get())
          .ok());
  EXPECT_EQ(
      EpMoeBlock::Create(config_, Slice(4, 7), rank1, dev_.backend.get(), dev_.allocator.get())
          .status()
          .message(),
      "moe: w1 has 3 tensors, expected 4 (experts [4, 8) of num_experts=8)");
  MoeConfig capacity = config_;
  capacity.capacity_factor = 1.25f;
  EXPECT_EQ(
      EpMoeBlock::Create(capacity, Slice(4, 8), rank1, dev_.backend.get(), dev_.allocator.get())
          .status()
          .message(),
      "ep_moe: expert parallelism is dropless; capacity_factor=1.25 is not supported");
  EXPECT_EQ(
      EpMoeBlock::Create(config_, Slice(4, 8), nullptr, dev_.backend.get(), dev_.allocator.get())
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

// Rank 1 never runs its Forward: rank 0 fails in the counts exchange with DeadlineExceeded
// naming the op, its rank and the limit, after the limit and not much later.
TEST_F(EpMoeErrorsTest, PeerThatNeverJoinsTimesOutForward) {
  const absl::Duration limit = absl::Milliseconds(300);
  auto group = LocalCommunicatorGroup::Create(2, {limit});
  ASSERT_TRUE(group.ok());
  auto ep = EpMoeBlock::Create(config_, Slice(0, 4), (*group)->rank(0), dev_.backend.get(),
                               dev_.allocator.get());
  ASSERT_TRUE(ep.ok()) << ep.status();
  auto x = Upload(dev_, std::vector<double>(3 * 16, 0.25), DType::kBF16, Shape({3, 16}));
  auto out = Upload(dev_, std::vector<double>(3 * 16, 0.0), DType::kBF16, Shape({3, 16}));
  ASSERT_TRUE(x.ok() && out.ok());
  const absl::Time start = absl::Now();
  const absl::Status s = (*ep)->Forward(x->tensor, out->tensor).status();
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(),
            "local: all_gather on rank 0 of 2 did not complete within 300 ms (a peer died, "
            "hangs or never called it)");
  EXPECT_GE(waited, limit);
  EXPECT_LT(waited, limit + absl::Seconds(2));
}

}  // namespace
}  // namespace moe::testing
