#include "tests/unit/dist/mpi_test_main.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/time.h"

namespace moe::testing {

MpiCommunicator* g_world = nullptr;

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
