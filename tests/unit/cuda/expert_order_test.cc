// The CUDA ExpertOrder against the CPU backend, exactly: random expert ids with duplicates,
// imbalance (a hot expert) and empty experts, up to 2000 experts (past 1024 a block places
// several), odd slot counts and slot counts past one tile. Data errors at the exact limits: bad
// counts (the outputs then untouched), ids outside [0, num_experts), an expert occurring more
// often than its count; the CPU backend's message for each.
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/expert_order.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "tests/testing/test_util.h"
#include "tests/unit/cuda/op_test_util.h"

namespace moe::cuda {
namespace {

using ::moe::cuda::testing::AsBytes;
using ::moe::cuda::testing::Bytes;
using ::moe::cuda::testing::DeviceBuffer;
using ::moe::cuda::testing::NoDeviceReason;

constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

std::vector<int64_t> CountsOf(const std::vector<int32_t>& ids, int64_t num_experts) {
  std::vector<int64_t> counts(num_experts, 0);
  for (int32_t id : ids) {
    if (id >= 0 && id < num_experts) ++counts[id];
  }
  return counts;
}

class CudaExpertOrderTest : public ::moe::cuda::testing::CudaOpTest {
 protected:

  // On success both outputs must equal the CPU's; on a count error both stay untouched.
  void Check(const std::vector<int32_t>& ids, int64_t num_experts,
             const std::vector<int64_t>& counts) {
    const int64_t n = static_cast<int64_t>(ids.size());
    SCOPED_TRACE(::testing::Message() << "expert_order n=" << n << " num_experts=" << num_experts);
    const std::vector<int32_t> init(n, -7);
    std::vector<int32_t> want_sorted = init, want_rows = init;
    ExpertOrderArgs args;
    args.n = n;
    args.ids = ids.data();
    args.num_experts = num_experts;
    args.counts = counts.data();
    args.sorted_slots = want_sorted.data();
    args.slot_to_row = want_rows.data();
    const absl::Status cpu = cpu_->ExpertOrder(args);

    DeviceBuffer dids(AsBytes(ids)), dcounts(AsBytes(counts)), dsorted(AsBytes(init)),
        drows(AsBytes(init)), derr(Bytes(16, 0x5a));
    args.ids = dids.as<int32_t>();
    args.counts = dcounts.as<int64_t>();
    args.sorted_slots = dsorted.as<int32_t>();
    args.slot_to_row = drows.as<int32_t>();
    const absl::Status launch = LaunchExpertOrder(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    EXPECT_EQ(FinishExpertOrder(args, derr.as<uint64_t>(), stream_), cpu);
    if (cpu.ok()) {
      EXPECT_EQ(dsorted.ToHost(), AsBytes(want_sorted));
      EXPECT_EQ(drows.ToHost(), AsBytes(want_rows));
    } else if (absl::StartsWith(cpu.message(), "expert_order: counts")) {
      EXPECT_EQ(dsorted.ToHost(), AsBytes(init));
      EXPECT_EQ(drows.ToHost(), AsBytes(init));
    }
  }

};

TEST_F(CudaExpertOrderTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t n, num_experts;
  };
  for (Case c : {Case{1, 1}, Case{7, 1}, Case{5, 8}, Case{33, 3}, Case{1023, 16}, Case{1025, 64},
                 Case{4097, 256}, Case{70001, 256}, Case{5000, 2000}, Case{3, 300}}) {
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE(::testing::Message() << "mode=" << mode);
      const int32_t hot = static_cast<int32_t>(rng() % c.num_experts);
      std::vector<int32_t> ids(c.n);
      for (int32_t& id : ids) {
        const int32_t uniform = static_cast<int32_t>(rng() % c.num_experts);
        switch (mode) {
          case 0:  // uniform
            id = uniform;
            break;
          case 1:  // imbalanced: most slots on one expert
            id = rng() % 8 == 0 ? uniform : hot;
            break;
          default:  // even experts only: the odd ones are empty
            id = uniform - uniform % 2;
            break;
        }
      }
      Check(ids, c.num_experts, CountsOf(ids, c.num_experts));
    }
  }
}

TEST_F(CudaExpertOrderTest, BadCountsAreReportedAndNothingIsWritten) {
  const std::vector<int32_t> ids = {0, 2, 2, 1, 0, 2};  // counts {2, 1, 3}
  Check(ids, 3, {2, 1, 3});                             // fine
  Check(ids, 3, {-1, 4, 3});
  Check(ids, 3, {2, 1, 4});  // limit + 1 on the last
  Check(ids, 3, {7, 0, 0});
  Check(ids, 3, {2, 1, 2});  // sum n - 1
  Check(ids, 3, {0, 0, 0});
  Check(ids, 3, {2, std::numeric_limits<int64_t>::min(), 3});
}

TEST_F(CudaExpertOrderTest, BadIdsAndOverfullExpertsAreReported) {
  // The CPU reports the first failing slot, whichever kind.
  Check({0, 3, 1, -1}, 3, {1, 1, 1});
  Check({-1, 0, 3, 1}, 3, {1, 1, 1});
  Check({0, 1, 2, kInt32Max}, 4, {1, 1, 1, 1});
  Check({0, 1, kInt32Min, 2}, 3, {1, 1, 1});
  Check({0, 0, 1, 2}, 3, {1, 2, 1});  // expert 0 overfull at slot 1
  Check({1, 2, 2, 0}, 3, {2, 1, 1});  // expert 2 overfull at slot 2
  Check({1, 2, 2, 5}, 3, {2, 1, 1});  // overfull at 2 before the bad id at 3
  Check({1, 5, 2, 2}, 3, {2, 1, 1});  // bad id at 1 before the overfull slot 3
  // Past one tile and across blocks.
  std::vector<int32_t> ids(3000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 7);
  const std::vector<int64_t> exact = CountsOf(ids, 7);
  std::vector<int64_t> counts = exact;
  counts[5] -= 1;
  counts[2] += 1;
  Check(ids, 7, counts);
  ids[2500] = 7;  // its count stays with expert 1, so only the id is wrong
  Check(ids, 7, exact);
}

}  // namespace
}  // namespace moe::cuda
