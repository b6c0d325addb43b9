// LocalCommunicatorGroup: every collective on 1..4 thread ranks, the deterministic all-reduce,
// argument checks, ranks that disagree, and a rank that never joins (DeadlineExceeded naming
// the op, the rank and the limit on every other rank, within the limit).
#include "engine/dist/local_communicator.h"

#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

// Runs body(comm) on one thread per rank and returns each rank's Status.
std::vector<absl::Status> OnRanks(LocalCommunicatorGroup& group,
                                  const std::function<absl::Status(Communicator*)>& body) {
  std::vector<absl::Status> out(group.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < group.size(); ++r) {
    threads.emplace_back([&, r] { out[r] = body(group.rank(r)); });
  }
  for (auto& t : threads) t.join();
  return out;
}

std::unique_ptr<LocalCommunicatorGroup> Group(int size,
                                              absl::Duration timeout = absl::Seconds(20)) {
  auto group = LocalCommunicatorGroup::Create(size, {timeout});
  EXPECT_TRUE(group.ok()) << group.status();
  return group.ok() ? std::move(*group) : nullptr;
}

class LocalCommunicatorTest : public ::testing::TestWithParam<int> {};

TEST_P(LocalCommunicatorTest, EveryCollective) {
  const int p = GetParam();
  auto group = Group(p);
  ASSERT_NE(group, nullptr);
  const auto statuses = OnRanks(*group, [p](Communicator* comm) -> absl::Status {
    const int r = comm->rank();
    EXPECT_EQ(comm->size(), p);
    EXPECT_EQ(comm->device(), Device::Cpu());
    // all_to_all_v: rank r sends q + 1 values r * 100 + q to rank q.
    std::vector<int64_t> send, sc(p), sd(p), rc(p), rd(p);
    for (int q = 0; q < p; ++q) {
      sd[q] = static_cast<int64_t>(send.size());
      sc[q] = q + 1;
      for (int k = 0; k <= q; ++k) send.push_back(r * 100 + q);
      rc[q] = r + 1;
      rd[q] = q * (r + 1);
    }
    std::vector<int64_t> recv(p * (r + 1), -1);
    absl::Status s = AllToAllVElements<int64_t>(comm, send.data(), sc, sd, recv.data(), rc, rd);
    if (!s.ok()) return s;
    for (int q = 0; q < p; ++q) {
      for (int k = 0; k <= r; ++k) EXPECT_EQ(recv[q * (r + 1) + k], q * 100 + r);
    }
    std::vector<int32_t> blocks(p), got(p), gathered(p);
    for (int q = 0; q < p; ++q) blocks[q] = r * 10 + q;
    if (s = comm->AllToAll(blocks.data(), got.data(), sizeof(int32_t)); !s.ok()) return s;
    for (int q = 0; q < p; ++q) EXPECT_EQ(got[q], q * 10 + r);
    if (s = comm->AllGather(&r, gathered.data(), sizeof(int32_t)); !s.ok()) return s;
    for (int q = 0; q < p; ++q) EXPECT_EQ(gathered[q], q);
    int64_t v[3] = {r + 1, r + 1, r + 1};
    if (s = comm->AllReduce(v, v, 1, DType::kI64, ReduceOp::kSum); !s.ok()) return s;
    if (s = comm->AllReduce(v + 1, v + 1, 1, DType::kI64, ReduceOp::kMin); !s.ok()) return s;
    if (s = comm->AllReduce(v + 2, v + 2, 1, DType::kI64, ReduceOp::kMax); !s.ok()) return s;
    EXPECT_EQ(v[0], p * (p + 1) / 2);
    EXPECT_EQ(v[1], 1);
    EXPECT_EQ(v[2], p);
    int64_t word = r == p - 1 ? 4242 : 0;
    if (s = comm->Broadcast(&word, sizeof(word), p - 1); !s.ok()) return s;
    EXPECT_EQ(word, 4242);
    int64_t plan = r == 0 ? 77 : 0;
    if (s = comm->BroadcastHost(&plan, sizeof(plan), 0); !s.ok()) return s;
    EXPECT_EQ(plan, 77);
    if (s = comm->AllGatherHost(&r, gathered.data(), sizeof(int32_t)); !s.ok()) return s;
    for (int q = 0; q < p; ++q) EXPECT_EQ(gathered[q], q);
    return comm->Barrier();
  });
  for (int r = 0; r < p; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
}

INSTANTIATE_TEST_SUITE_P(Ranks, LocalCommunicatorTest, ::testing::Values(1, 2, 3, 4));

// f32 sums fold in ascending rank order, rounding after each add, on every rank: 1 + 2^-24
// rounds back to 1 each time, while the exact sum (or another order) would not give 1.
TEST(LocalCommunicatorReduceTest, FloatSumFoldsInRankOrder) {
  auto group = Group(4);
  ASSERT_NE(group, nullptr);
  std::vector<float> sums(4);
  const auto statuses = OnRanks(*group, [&](Communicator* comm) {
    const float mine = comm->rank() == 0 ? 1.0f : std::ldexp(1.0f, -24);
    return comm->AllReduce(&mine, &sums[comm->rank()], 1, DType::kF32, ReduceOp::kSum);
  });
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(statuses[r].ok()) << statuses[r];
    EXPECT_EQ(sums[r], 1.0f);
  }
}

TEST(LocalCommunicatorArgsTest, CreateChecksSizeAndTimeout) {
  EXPECT_EQ(LocalCommunicatorGroup::Create(0).status().message(),
            "local: size=0 must be at least 1");
  EXPECT_TRUE(LocalCommunicatorGroup::Create(1).ok());
  EXPECT_EQ(LocalCommunicatorGroup::Create(2, {absl::ZeroDuration()}).status().message(),
            "local: timeout=0 must be positive");
}

TEST(LocalCommunicatorArgsTest, BadArgumentsAreInvalidArgument) {
  auto group = Group(1);
  ASSERT_NE(group, nullptr);
  Communicator* comm = group->rank(0);
  int64_t x = 0;
  const absl::Status short_list = comm->AllToAllV(&x, {}, {0}, &x, {8}, {0});
  EXPECT_EQ(short_list.message(),
            "local: all_to_all_v on rank 0 of 1: send_counts has 0 entries, expected size=1");
  const absl::Status negative = comm->AllToAllV(&x, {-1}, {0}, &x, {8}, {0});
  EXPECT_EQ(negative.message(),
            "local: all_to_all_v on rank 0 of 1: send_counts[0]=-1 is negative");
  EXPECT_EQ(comm->Broadcast(&x, 8, 1).message(),
            "local: broadcast on rank 0 of 1: root=1 is outside [0, size=1)");
  EXPECT_EQ(comm->AllReduce(&x, &x, 1, DType::kBF16, ReduceOp::kSum).message(),
            "comm: all_reduce on rank 0 of 1: dtype bf16 is not i32, i64 or f32");
  EXPECT_EQ(comm->AllGather(&x, &x, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(comm->Barrier().ok());  // nothing above reached the group
}

// Counts that disagree are seen by every rank alike (InvalidArgument), and break the group.
TEST(LocalCommunicatorArgsTest, DisagreeingCountsFailOnEveryRank) {
  auto group = Group(2);
  ASSERT_NE(group, nullptr);
  const auto statuses = OnRanks(*group, [](Communicator* comm) {
    int64_t buf[4] = {};
    const int64_t expect = comm->rank() == 0 ? 16 : 8;  // rank 1 expects 8, rank 0 sends 8
    return comm->AllToAllV(buf, {8, 8}, {0, 8}, buf + 2, {8, expect}, {0, 8});
  });
  for (const absl::Status& s : statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("rank 1 sends 8 bytes to rank 0, which expects 16"),
              std::string::npos)
        << s;
  }
  const auto after = OnRanks(*group, [](Communicator* comm) { return comm->Barrier(); });
  for (const absl::Status& s : after) EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(LocalCommunicatorArgsTest, DifferentCollectivesAreInternal) {
  auto group = Group(2);
  ASSERT_NE(group, nullptr);
  const auto statuses = OnRanks(*group, [](Communicator* comm) {
    int32_t x = 0, y[2];
    return comm->rank() == 0 ? comm->Barrier() : comm->AllGather(&x, y, sizeof(x));
  });
  EXPECT_EQ(statuses[0].message(),
            "local: barrier on rank 0 of 2: rank 1 called all_gather instead");
  EXPECT_EQ(statuses[1].message(),
            "local: all_gather on rank 1 of 2: rank 0 called barrier instead");
}

// Rank 2 of 3 never calls: ranks 0 and 1 get DeadlineExceeded after the limit, not later; a
// late rank then finds the group broken.
TEST(LocalCommunicatorTimeoutTest, RankThatNeverJoinsTimesOutTheOthers) {
  const absl::Duration limit = absl::Milliseconds(300);
  auto group = Group(3, limit);
  ASSERT_NE(group, nullptr);
  std::vector<absl::Duration> waited(3);
  std::vector<absl::Status> statuses(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      const absl::Time start = absl::Now();
      statuses[r] = group->rank(r)->Barrier();
      waited[r] = absl::Now() - start;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(statuses[r].code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_EQ(statuses[r].message(),
              absl::StrCat("local: barrier on rank ", r,
                           " of 3 did not complete within 300 ms (a peer died, hangs or never "
                           "called it)"));
    EXPECT_GE(waited[r], limit);
    EXPECT_LT(waited[r], limit + absl::Seconds(2));
  }
  const absl::Status late = group->rank(2)->Barrier();
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(late.message().find("broken by an earlier failure: local: barrier on rank"),
            std::string::npos)
      << late;
}

}  // namespace
}  // namespace moe
