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
#include "gtest/gtest.h"
#include "tests/unit/dist/ep_model_cases.h"
#include "tests/unit/dist/mpi_test_main.h"

namespace moe::testing {
namespace {

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
