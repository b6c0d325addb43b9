// Expert-parallel whole models over Open MPI, one process per rank, run by
// tests/unit/dist/mpirun_test.sh under `mpirun -np 2` and `-np 4`: the cases of
// ep_model_cases.h (logits and greedy generation through EpStepRunner bit-identical to one
// device, which rank 0 loads; ranks without tokens in a step; the equal-split modes).
//
// Every rank runs every test; rank 0 writes the test XML and reports, per test, which other
// ranks failed (their messages are in the log, prefixed by their rank).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/dist/mpi_communicator.h"
#include "gtest/gtest.h"
#include "tests/unit/dist/ep_model_cases.h"

namespace moe::testing {
namespace {

MpiCommunicator* g_world = nullptr;

class MpiTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // Collective: every rank shares whether it failed, rank 0 reports the others.
    const int32_t failed = HasFailure() ? 1 : 0;
    std::vector<int32_t> all(g_world->size());
    const absl::Status s = g_world->AllGather(&failed, all.data(), sizeof(int32_t));
    ASSERT_TRUE(s.ok()) << s;
    if (g_world->rank() != 0) return;
    for (int r = 1; r < g_world->size(); ++r) {
      EXPECT_EQ(all[r], 0) << "rank " << r << " failed this test (its messages are in the log)";
    }
  }
};

TEST_F(MpiTest, Qwen3AutoF32) {
  const absl::Status s = RunEpModelCase(g_world, {.model_dir = "models/qwen3-moe-tiny"});
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(MpiTest, Qwen3EqualSplitAlways) {
  const absl::Status s = RunEpModelCase(
      g_world, {.model_dir = "models/qwen3-moe-tiny", .equal_split = EqualSplitMode::kAlways});
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(MpiTest, Qwen3EqualSplitNever) {
  const absl::Status s = RunEpModelCase(
      g_world, {.model_dir = "models/qwen3-moe-tiny", .equal_split = EqualSplitMode::kNever});
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(MpiTest, MixtralAutoBf16) {
  const absl::Status s =
      RunEpModelCase(g_world, {.model_dir = "models/mixtral-tiny", .dtype = DType::kBF16});
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace moe::testing

int main(int argc, char** argv) {
  auto runtime = moe::MpiRuntime::Init(&argc, &argv);
  if (!runtime.ok()) {
    fprintf(stderr, "%s\n", std::string(runtime.status().message()).c_str());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  if ((*runtime)->world_rank() != 0) {
    // One XML and one premature-exit marker for the job, rank 0's (Bazel's XML_OUTPUT_FILE
    // and TEST_PREMATURE_EXIT_FILE reach every rank).
    GTEST_FLAG_SET(output, "");
    unsetenv("TEST_PREMATURE_EXIT_FILE");
  }
  auto world = moe::MpiCommunicator::CreateWorld({absl::Seconds(120)});
  if (!world.ok()) {
    fprintf(stderr, "%s\n", std::string(world.status().message()).c_str());
    return 1;
  }
  moe::testing::g_world = world->get();
  const int rc = RUN_ALL_TESTS();
  // A failure on any rank fails the job.
  int32_t failed = rc != 0, any = 0;
  if (!(*world)->AllReduce(&failed, &any, 1, moe::DType::kI32, moe::ReduceOp::kMax).ok()) any = 1;
  world->reset();
  runtime->reset();
  return any;
}
