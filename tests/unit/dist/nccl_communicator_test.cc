// NcclCommunicator on every local GPU (one thread per GPU, ncclCommInitAll): the collectives on
// device buffers (and host arrays through its staging), EpMoeBlock on CUDA backends
// bit-identical to the single-GPU MoeBlock, shipped models expert parallel bit-identical to one
// GPU, and a rank that never joins. Skipped without a CUDA device (the CPU-only CI machine only
// builds it).
#include "engine/dist/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tests/unit/dist/ep_model_cases.h"
#include "tests/unit/dist/ep_test_util.h"

namespace moe::testing {
namespace {

constexpr uint64_t kSeed = 0x5eed6;

int Gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::vector<int> AllDevices() {
  std::vector<int> d(Gpus());
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<int>(i);
  return d;
}

void OnRanks(int ranks, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
}

absl::StatusOr<TestDevice> CudaDevice(int i) { return MakeDevice(Device::Cuda(i)); }

TEST(NcclCommunicatorTest, Collectives) {
  if (Gpus() < 1) GTEST_SKIP() << "no CUDA device";
  auto comms = NcclCommunicator::CreateAll(AllDevices());
  ASSERT_TRUE(comms.ok()) << comms.status();
  const int p = static_cast<int>(comms->size());
  std::vector<std::string> errors(p);
  OnRanks(p, [&](int r) {
    Communicator* comm = (*comms)[r].get();
    cudaSetDevice(r);
    int64_t* d = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&d), 4 * p * sizeof(int64_t));
    std::vector<int64_t> send(p);
    for (int q = 0; q < p; ++q) send[q] = r * 100 + q;
    cudaMemcpy(d, send.data(), p * sizeof(int64_t), cudaMemcpyHostToDevice);
    absl::Status s = comm->AllToAll(d, d + p, sizeof(int64_t));
    std::vector<int64_t> got(p);
    cudaMemcpy(got.data(), d + p, p * sizeof(int64_t), cudaMemcpyDeviceToHost);
    for (int q = 0; q < p && s.ok(); ++q) {
      if (got[q] != q * 100 + r) s = absl::InternalError(absl::StrCat("all_to_all from ", q));
    }
    // Host memory: a plan broadcast from rank 0 (larger than the first staging buffer) and
    // an all-gather.
    std::vector<int32_t> plan(100000, r == 0 ? 7 : 0);
    if (r == 0) plan.back() = 9;
    if (s.ok()) s = comm->BroadcastHost(plan.data(), plan.size() * sizeof(int32_t), 0);
    if (s.ok() && (plan.front() != 7 || plan.back() != 9)) s = absl::InternalError("broadcast");
    std::vector<int64_t> ranks(p);
    const int64_t mine = r;
    if (s.ok()) s = comm->AllGatherHost(&mine, ranks.data(), sizeof(int64_t));
    for (int q = 0; q < p && s.ok(); ++q) {
      if (ranks[q] != q) s = absl::InternalError("all_gather_host");
    }
    int64_t v = r + 1, sum = 0;
    if (s.ok()) s = comm->AllReduce(&v, &sum, 1, DType::kI64, ReduceOp::kSum);
    if (s.ok() && sum != p * (p + 1) / 2) s = absl::InternalError("all_reduce");
    if (s.ok()) s = comm->Barrier();
    cudaFree(d);
    if (!s.ok()) errors[r] = std::string(s.message());
  });
  for (int r = 0; r < p; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(NcclCommunicatorTest, EpMoeBlockBitIdenticalToOneGpu) {
  if (Gpus() < 1) GTEST_SKIP() << "no CUDA device";
  const int p = Gpus();
  auto ref_dev = CudaDevice(0);
  ASSERT_TRUE(ref_dev.ok()) << ref_dev.status();
  for (const EpCase& c : MakeEpCases(p, kSeed)) {
    SCOPED_TRACE(c.name);
    auto reference = RunReference(c, *ref_dev);
    ASSERT_TRUE(reference.ok()) << reference.status();
    auto comms = NcclCommunicator::CreateAll(AllDevices());
    ASSERT_TRUE(comms.ok()) << comms.status();
    std::vector<absl::StatusOr<EpRankRun>> runs(p, absl::UnknownError("not run"));
    OnRanks(p, [&](int r) {
      auto dev = CudaDevice(r);
      if (!dev.ok()) {
        runs[r] = dev.status();
        return;
      }
      runs[r] = RunEpRank(c, (*comms)[r].get(), *dev, EqualSplitMode::kAuto);
    });
    for (int r = 0; r < p; ++r) {
      ASSERT_TRUE(runs[r].ok()) << "rank " << r << ": " << runs[r].status();
      EXPECT_EQ(runs[r]->bytes, RankRows(c, reference->bytes, r)) << "rank " << r;
    }
  }
}

// A shipped model expert parallel over every local GPU (EpStepRunner, ep_model_cases.h):
// logits and greedy generation bit-identical to the same model on GPU 0.
struct ModelCase {
  std::string model;
  EqualSplitMode mode;
  DType dtype;
  bool batch_invariant = false;  // needed for f32: cuBLASLt picks its algorithm by m
};

class NcclModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(NcclModelTest, BitIdenticalToOneGpu) {
  if (Gpus() < 1) GTEST_SKIP() << "no CUDA device";
  const ModelCase& m = GetParam();
  auto comms = NcclCommunicator::CreateAll(AllDevices(), {absl::Seconds(60)});
  ASSERT_TRUE(comms.ok()) << comms.status();
  const int p = static_cast<int>(comms->size());
  const EpModelCase c{.model_dir = "models/" + m.model,
                      .dtype = m.dtype,
                      .equal_split = m.mode,
                      .batch_invariant = m.batch_invariant};
  std::vector<absl::Status> results(p);
  OnRanks(p, [&](int r) { results[r] = RunEpModelCase((*comms)[r].get(), c); });
  for (int r = 0; r < p; ++r) EXPECT_TRUE(results[r].ok()) << results[r];
}

std::string ModelCaseName(const ::testing::TestParamInfo<ModelCase>& info) {
  std::string name = absl::StrCat(info.param.model, "_",
                                  info.param.mode == EqualSplitMode::kAuto     ? "auto"
                                  : info.param.mode == EqualSplitMode::kAlways ? "always"
                                                                               : "never",
                                  "_", DTypeName(info.param.dtype),
                                  info.param.batch_invariant ? "_invariant" : "");
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Models, NcclModelTest,
    ::testing::Values(ModelCase{"qwen3-moe-tiny", EqualSplitMode::kAuto, DType::kBF16},
                      ModelCase{"qwen3-moe-tiny", EqualSplitMode::kAlways, DType::kBF16},
                      ModelCase{"qwen3-moe-tiny", EqualSplitMode::kNever, DType::kF32, true},
                      ModelCase{"qwen3-moe-tiny", EqualSplitMode::kAuto, DType::kBF16, true},
                      ModelCase{"mixtral-tiny", EqualSplitMode::kAuto, DType::kBF16},
                      ModelCase{"deepseek-v3-tiny", EqualSplitMode::kAuto, DType::kBF16},
                      ModelCase{"qwen2-moe-tiny", EqualSplitMode::kNever, DType::kBF16}),
    ModelCaseName);

TEST(NcclCommunicatorTest, RankThatNeverJoinsTimesOut) {
  if (Gpus() < 2) GTEST_SKIP() << "needs 2 CUDA devices";
  auto comms = NcclCommunicator::CreateAll({0, 1}, {absl::Milliseconds(500)});
  ASSERT_TRUE(comms.ok()) << comms.status();
  const absl::Time start = absl::Now();
  const absl::Status s = (*comms)[0]->Barrier();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_EQ(s.message(),
            "nccl: barrier on rank 0 of 2 did not complete within 500 ms (a peer died, hangs or "
            "never called it)");
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

}  // namespace
}  // namespace moe::testing
