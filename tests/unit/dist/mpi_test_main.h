// The main() of the gtest binaries run under mpirun (mpirun_test.sh): MPI up, the world
// communicator, every test on every rank, one XML (rank 0's), and a failure on any rank fails
// the job. Link mpi_test_main instead of gtest_main.
#ifndef MOE_TESTS_UNIT_DIST_MPI_TEST_MAIN_H_
#define MOE_TESTS_UNIT_DIST_MPI_TEST_MAIN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/dist/mpi_communicator.h"
#include "gtest/gtest.h"

namespace moe::testing {

// The world communicator, set by main before the tests run.
extern MpiCommunicator* g_world;

// A test fixture whose TearDown is collective: every rank shares whether it failed, and rank 0
// (whose XML is the job's) fails the test for any rank that did.
class MpiTest : public ::testing::Test {
 protected:
  void TearDown() override {
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

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_DIST_MPI_TEST_MAIN_H_
