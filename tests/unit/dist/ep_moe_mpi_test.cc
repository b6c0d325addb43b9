// The Communicator and EpMoeBlock over Open MPI, one process per rank, run by
// tests/unit/dist/mpirun_test.sh under `mpirun -np 2` and `-np 4`: the collectives, every case of
// ep_test_util.h bit-identical to the single-device MoeBlock (each rank computes the reference
// over all tokens itself), and a rank that never joins a collective.
//
// Every rank runs every test; rank 0 writes the test XML and reports, per test, which other
// ranks failed (their messages are in the log, prefixed by their rank).
#include <cmath>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/unit/dist/ep_test_util.h"
#include "tests/unit/dist/mpi_test_main.h"

namespace moe::testing {
namespace {

constexpr uint64_t kSeed = 0x5eed6;
constexpr int kCases = 11;

TEST_F(MpiTest, Collectives) {
  Communicator* comm = g_world;
  const int p = comm->size(), r = comm->rank();
  // all_to_all_v: rank r sends q + 1 values r * 100 + q to rank q.
  std::vector<int64_t> send, send_counts(p), send_displs(p), recv_counts(p), recv_displs(p);
  for (int q = 0; q < p; ++q) {
    send_displs[q] = static_cast<int64_t>(send.size());
    send_counts[q] = q + 1;
    for (int k = 0; k <= q; ++k) send.push_back(r * 100 + q);
    recv_counts[q] = r + 1;
    recv_displs[q] = q * (r + 1);
  }
  std::vector<int64_t> recv(p * (r + 1), -1);
  ASSERT_TRUE(AllToAllVElements<int64_t>(comm, send.data(), send_counts, send_displs, recv.data(),
                                         recv_counts, recv_displs)
                  .ok());
  for (int q = 0; q < p; ++q) {
    for (int k = 0; k <= r; ++k) EXPECT_EQ(recv[q * (r + 1) + k], q * 100 + r);
  }
  // all_to_all: block q of rank r is r * 10 + q.
  std::vector<int32_t> blocks(p), got(p);
  for (int q = 0; q < p; ++q) blocks[q] = r * 10 + q;
  ASSERT_TRUE(comm->AllToAll(blocks.data(), got.data(), sizeof(int32_t)).ok());
  for (int q = 0; q < p; ++q) EXPECT_EQ(got[q], q * 10 + r);
  // all_reduce: exact integer sum / min / max; f32 sum folded in ascending rank order.
  int64_t v[3] = {r + 1, r + 1, r + 1};
  ASSERT_TRUE(comm->AllReduce(v, v, 1, DType::kI64, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm->AllReduce(v + 1, v + 1, 1, DType::kI64, ReduceOp::kMin).ok());
  ASSERT_TRUE(comm->AllReduce(v + 2, v + 2, 1, DType::kI64, ReduceOp::kMax).ok());
  EXPECT_EQ(v[0], p * (p + 1) / 2);
  EXPECT_EQ(v[1], 1);
  EXPECT_EQ(v[2], p);
  const float mine = r == 0 ? 1.0f : std::ldexp(1.0f, -24);  // 1 + 2^-24 + ... rounds each add
  float sum = 0.0f;
  ASSERT_TRUE(comm->AllReduce(&mine, &sum, 1, DType::kF32, ReduceOp::kSum).ok());
  EXPECT_EQ(sum, 1.0f);
  // broadcast from the last rank, then a barrier.
  int64_t word = r == p - 1 ? 4242 : 0;
  ASSERT_TRUE(comm->Broadcast(&word, sizeof(word), p - 1).ok());
  EXPECT_EQ(word, 4242);
  EXPECT_TRUE(comm->Barrier().ok());
}

class EpMoeMpiTest : public MpiTest, public ::testing::WithParamInterface<int> {};

TEST_P(EpMoeMpiTest, BitIdenticalToOneDevice) {
  const std::vector<EpCase> cases = MakeEpCases(g_world->size(), kSeed);
  ASSERT_EQ(static_cast<int>(cases.size()), kCases);
  const EpCase& c = cases[GetParam()];
  SCOPED_TRACE(absl::StrCat(c.name, " on rank ", g_world->rank()));
  auto dev = MakeCpuDevice(1);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto reference = RunReference(c, *dev);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const std::vector<uint8_t> want = RankRows(c, reference->bytes, g_world->rank());
  for (EqualSplitMode mode :
       {EqualSplitMode::kAuto, EqualSplitMode::kAlways, EqualSplitMode::kNever}) {
    auto run = RunEpRank(c, g_world, *dev, mode);
    // A failed rank would leave its peers waiting in the next collective: stop every rank.
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->bytes, want) << "mode " << static_cast<int>(mode);
    if (mode == EqualSplitMode::kNever) {
      EXPECT_EQ(run->trace.exchange_path, ExchangePath::kVariable);
    } else if (mode == EqualSplitMode::kAlways) {
      EXPECT_EQ(run->trace.exchange_path, ExchangePath::kEqualSplit);
    } else if (c.auto_path != ExchangePath::kNone) {
      EXPECT_EQ(run->trace.exchange_path, c.auto_path);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, EpMoeMpiTest, ::testing::Range(0, kCases),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return MakeEpCases(2, kSeed)[info.param].name;
                         });

// The last rank never joins a barrier: every other rank gets DeadlineExceeded naming the op,
// its rank and the limit, within the limit (plus scheduling slack). Afterwards the late rank
// joins the abandoned barrier so no request is left running, and the communicator stays
// broken.
TEST_F(MpiTest, RankThatNeverJoinsTimesOutEveryOtherRank) {
  const absl::Duration limit = absl::Milliseconds(500);
  auto comm = MpiCommunicator::CreateWorld({limit});
  ASSERT_TRUE(comm.ok()) << comm.status();
  const int p = (*comm)->size(), r = (*comm)->rank();
  if (r != p - 1) {
    const absl::Time start = absl::Now();
    const absl::Status s = (*comm)->Barrier();
    const absl::Duration waited = absl::Now() - start;
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_EQ(s.message(), absl::StrCat("mpi: barrier on rank ", r, " of ", p,
                                        " did not complete within 500 ms (a peer died, hangs "
                                        "or never called it)"));
    EXPECT_GE(waited, limit);
    EXPECT_LT(waited, limit + absl::Seconds(2));
    const absl::Status after = (*comm)->AllGather(&r, nullptr, 0);
    EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  }
  ASSERT_TRUE(g_world->Barrier().ok());  // every other rank has timed out by now
  if (r == p - 1) {
    EXPECT_TRUE((*comm)->Barrier().ok());
  }
  ASSERT_TRUE(g_world->Barrier().ok());
}

}  // namespace
}  // namespace moe::testing
