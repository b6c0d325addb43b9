// EpMoeBlock over the in-process communicator (ranks as threads) against the single-device
// MoeBlock: bit-identical outputs for P = 1..4 ranks, every case of ep_test_util.h, with the
// equal-split exchange on, off and automatic (MOE_SEMANTICS 7.5c, 7.7, 7.8, 7.11, 7.16).
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/dist/local_communicator.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/unit/dist/ep_test_util.h"

namespace moe::testing {
namespace {

constexpr uint64_t kSeed = 0x5eed6;

// Runs `c` on `ranks` threads; one CPU backend (one thread) per rank.
std::vector<absl::StatusOr<EpRankRun>> RunOnThreads(const EpCase& c, int ranks,
                                                    EqualSplitMode mode) {
  auto group = LocalCommunicatorGroup::Create(ranks, {absl::Seconds(30)});
  std::vector<absl::StatusOr<EpRankRun>> runs(ranks, absl::UnknownError("not run"));
  if (!group.ok()) {
    runs.assign(ranks, group.status());
    return runs;
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      auto dev = MakeCpuDevice(1);
      if (!dev.ok()) {
        runs[r] = dev.status();
        return;
      }
      runs[r] = RunEpRank(c, (*group)->rank(r), *dev, mode);
    });
  }
  for (auto& t : threads) t.join();
  return runs;
}

class EpMoeLocalTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(EpMoeLocalTest, BitIdenticalToOneDevice) {
  const auto [ranks, index] = GetParam();
  const std::vector<EpCase> cases = MakeEpCases(ranks, kSeed);
  ASSERT_LT(index, static_cast<int>(cases.size()));
  const EpCase& c = cases[index];
  SCOPED_TRACE(c.name);
  auto dev = MakeCpuDevice(1);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto reference = RunReference(c, *dev);
  ASSERT_TRUE(reference.ok()) << reference.status();

  const bool replicated = c.name == "replicated";
  for (EqualSplitMode mode :
       {EqualSplitMode::kAuto, EqualSplitMode::kAlways, EqualSplitMode::kNever}) {
    SCOPED_TRACE(absl::StrCat("equal_split mode ", static_cast<int>(mode)));
    const auto runs = RunOnThreads(c, ranks, mode);
    std::vector<int64_t> summed(c.config.num_experts, 0);
    int64_t sent = 0, received = 0;
    for (int r = 0; r < ranks; ++r) {
      SCOPED_TRACE(absl::StrCat("rank ", r));
      ASSERT_TRUE(runs[r].ok()) << runs[r].status();
      const EpRankRun& run = *runs[r];
      EXPECT_EQ(run.bytes, RankRows(c, reference->bytes, r));
      const ExchangePath want = mode == EqualSplitMode::kNever       ? ExchangePath::kVariable
                                : mode == EqualSplitMode::kAlways    ? ExchangePath::kEqualSplit
                                : c.auto_path != ExchangePath::kNone ? c.auto_path
                                                                     : run.trace.exchange_path;
      EXPECT_EQ(run.trace.exchange_path, want);
      if (c.auto_path == ExchangePath::kEqualSplit) {
        EXPECT_EQ(run.trace.padding_rows, 0);
      }
      if (c.expert_path != ExpertPath::kNone) {
        EXPECT_EQ(run.trace.expert_path, c.expert_path);
      }
      EXPECT_EQ(run.trace.sent_rows,
                static_cast<int64_t>(c.rank_tokens[r].size()) * c.config.top_k);
      sent += run.trace.sent_rows;
      received += run.trace.received_rows;
      // MOE_SEMANTICS 7.8: replicated ranks each see the single-rank counts (never summed);
      // token-sharded ranks' counts add up to them exactly.
      if (replicated) {
        EXPECT_EQ(run.counts, reference->counts);
      } else {
        for (size_t e = 0; e < summed.size(); ++e) summed[e] += run.counts[e];
        // Every rank knows the group's counts from the counts all-gather.
        EXPECT_EQ(run.trace.global_counts, reference->counts);
      }
    }
    EXPECT_EQ(sent, received);
    if (!replicated) {
      EXPECT_EQ(summed, reference->counts);
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::tuple<int, int>>& info) {
  const auto [ranks, index] = info.param;
  return absl::StrCat("P", ranks, "_", MakeEpCases(ranks, kSeed)[index].name);
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpMoeLocalTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4), ::testing::Range(0, 11)),
                         CaseName);

TEST(EpMoeLocalCasesTest, ElevenCases) { EXPECT_EQ(MakeEpCases(2, kSeed).size(), 11u); }

// Equal split with padding: a skewed step pads every block to the largest count; the NaN
// padding rows never reach an output (the outputs above are bit-identical and finite).
TEST(EpMoeLocalPaddingTest, SkewedStepPadsAndStaysFinite) {
  const std::vector<EpCase> cases = MakeEpCases(2, kSeed);
  const EpCase& c = cases[2];
  ASSERT_EQ(c.name, "skewed_to_rank0");
  const auto runs = RunOnThreads(c, 2, EqualSplitMode::kAlways);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(runs[r].ok()) << runs[r].status();
    // 8 rows to rank 0, none to rank 1: blocks of 8, 8 rows of padding.
    EXPECT_EQ(runs[r]->trace.block_rows, 8);
    EXPECT_EQ(runs[r]->trace.padding_rows, 8);
    const std::vector<double> v =
        Decode(runs[r]->bytes.data(), runs[r]->bytes.size() / 2, DType::kBF16);
    for (double x : v) ASSERT_TRUE(std::isfinite(x));
  }
  EXPECT_EQ(runs[0]->trace.received_rows, 16);
  EXPECT_EQ(runs[1]->trace.received_rows, 0);
}

}  // namespace
}  // namespace moe::testing
