// The CUDA bincount against a CPU bincount. Needs a CUDA device: without one the GPU tests are
// skipped (reported as skipped, never as passed); the argument checks run everywhere.
#include "kernels/cuda/bincount.h"

#include <cuda_runtime.h>  // the typed cudaMalloc overloads

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe::cuda {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// "" if a CUDA device is usable, else why not.
std::string NoDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return std::string("no CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(err) +
           " (" + cudaGetErrorString(err) + ")";
  }
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return "";
}

struct Result {
  std::vector<int64_t> counts;
  uint64_t invalid = 0;
};

std::vector<int64_t> CpuBincount(const std::vector<int32_t>& ids, int64_t num_bins,
                                 uint64_t* invalid) {
  std::vector<int64_t> counts(num_bins, 0);
  *invalid = 0;
  for (int32_t id : ids) {
    if (id >= 0 && id < num_bins) {
      ++counts[id];
    } else {
      ++*invalid;
    }
  }
  return counts;
}

class CudaBincountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoDeviceReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Copies ids to the device, runs the kernel, and copies the results back.
  Result Run(const std::vector<int32_t>& ids, int64_t num_bins) {
    Result r;
    int32_t* d_ids = nullptr;
    int64_t* d_counts = nullptr;
    uint64_t* d_invalid = nullptr;
    const size_t id_bytes = ids.size() * sizeof(int32_t);
    EXPECT_EQ(cudaMalloc(&d_ids, id_bytes == 0 ? 1 : id_bytes), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&d_counts, num_bins * sizeof(int64_t)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&d_invalid, sizeof(uint64_t)), cudaSuccess);
    // Garbage in the outputs: the op must overwrite them.
    EXPECT_EQ(cudaMemset(d_counts, 0x5a, num_bins * sizeof(int64_t)), cudaSuccess);
    EXPECT_EQ(cudaMemset(d_invalid, 0x5a, sizeof(uint64_t)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d_ids, ids.data(), id_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    BincountArgs args;
    args.n = static_cast<int64_t>(ids.size());
    args.ids = d_ids;
    args.num_bins = num_bins;
    args.counts = d_counts;
    const absl::Status s = LaunchBincount(args, d_invalid, stream_);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    r.counts.resize(num_bins);
    EXPECT_EQ(
        cudaMemcpy(r.counts.data(), d_counts, num_bins * sizeof(int64_t), cudaMemcpyDeviceToHost),
        cudaSuccess);
    EXPECT_EQ(cudaMemcpy(&r.invalid, d_invalid, sizeof(uint64_t), cudaMemcpyDeviceToHost),
              cudaSuccess);
    cudaFree(d_ids);
    cudaFree(d_counts);
    cudaFree(d_invalid);
    return r;
  }

  void ExpectMatchesCpu(const std::vector<int32_t>& ids, int64_t num_bins) {
    SCOPED_TRACE(::testing::Message() << "n=" << ids.size() << " num_bins=" << num_bins);
    uint64_t want_invalid = 0;
    const std::vector<int64_t> want = CpuBincount(ids, num_bins, &want_invalid);
    const Result got = Run(ids, num_bins);
    EXPECT_EQ(got.counts, want);
    EXPECT_EQ(got.invalid, want_invalid);
  }

  cudaStream_t stream_ = nullptr;
};

TEST_F(CudaBincountTest, RandomIdsMatchCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  // Odd and round sizes; bin counts on both sides of the shared-memory limit (12288).
  for (int64_t n : {0, 1, 7, 256, 1000, 65537, (1 << 20) + 5}) {
    for (int64_t bins : {1, 8, 128, 257, 12288, 12289, 100000}) {
      std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(bins - 1));
      std::vector<int32_t> ids(n);
      for (int32_t& id : ids) id = dist(rng);
      ExpectMatchesCpu(ids, bins);
    }
  }
}

// 2^24 + 3 is where a float histogram stops counting (2^24 + 1 is not a float).
TEST_F(CudaBincountTest, AllZerosPastFloatPrecision) {
  const std::vector<int32_t> ids((int64_t{1} << 24) + 3, 0);
  const Result got = Run(ids, 8);
  ASSERT_EQ(got.counts.size(), 8u);
  EXPECT_EQ(got.counts[0], 16777219);
  for (int b = 1; b < 8; ++b) EXPECT_EQ(got.counts[b], 0) << "bin " << b;
  EXPECT_EQ(got.invalid, 0u);
}

TEST_F(CudaBincountTest, SkewedIdsOnTheGlobalAtomicPath) {
  // Most ids in one bin, with more bins than shared memory holds.
  std::vector<int32_t> ids(3000001, 20000);
  for (size_t i = 0; i < ids.size(); i += 7) ids[i] = static_cast<int32_t>(i % 20001);
  ExpectMatchesCpu(ids, 20001);
}

TEST_F(CudaBincountTest, IdsOutOfRangeAreCountedApart) {
  std::vector<int32_t> ids = {0, 3, -1, 4, 2, 2147483647, -2147483647 - 1, 3, 5, 4};
  const Result got = Run(ids, 4);
  EXPECT_EQ(got.counts, (std::vector<int64_t>{1, 0, 1, 2}));
  EXPECT_EQ(got.invalid, 6u) << "-1, 4, INT32_MAX, INT32_MIN, 5, 4";
  ExpectMatchesCpu(ids, 4);
  ExpectMatchesCpu(ids, 12289);  // the global-atomic path checks the range too
}

TEST_F(CudaBincountTest, SameBitsEveryRun) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> dist(0, 127);
  std::vector<int32_t> ids(1 << 22);
  for (int32_t& id : ids) id = dist(rng);
  const Result first = Run(ids, 128);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Run(ids, 128).counts, first.counts);
}

// Argument checks happen on the host before any CUDA call, so they run without a GPU.
TEST(CudaBincountArgsTest, RejectsBadArguments) {
  int32_t ids[1] = {0};
  int64_t counts[1] = {0};
  uint64_t invalid = 0;
  BincountArgs args;
  args.n = 1;
  args.ids = ids;
  args.num_bins = 1;
  args.counts = counts;

  BincountArgs bad = args;
  bad.n = -1;
  absl::Status s = LaunchBincount(bad, &invalid, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "bincount (cuda): n=-1 is negative");

  bad = args;
  bad.num_bins = 0;
  s = LaunchBincount(bad, &invalid, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "bincount (cuda): num_bins=0 must be positive");

  bad = args;
  bad.ids = nullptr;
  EXPECT_THAT(Msg(LaunchBincount(bad, &invalid, nullptr)), HasSubstr("ids is null"));
  bad = args;
  bad.counts = nullptr;
  EXPECT_THAT(Msg(LaunchBincount(bad, &invalid, nullptr)), HasSubstr("counts is null"));
  EXPECT_THAT(Msg(LaunchBincount(args, nullptr, nullptr)), HasSubstr("invalid_ids is null"));
}

}  // namespace
}  // namespace moe::cuda
