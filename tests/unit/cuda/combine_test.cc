// The CUDA Combine against the CPU backend, bit for bit: random expert ids with ties inside a
// token, top_k 1..8 and 16, odd token counts, dropped slots (negative slot_to_row), f32 and
// bf16, weights or none, add_to_out, leading dims past the row length (whose padding must stay
// untouched). slot_to_row errors at the exact limit: the CPU backend's message, out untouched.
// Also bincount -> expert_order -> combine through both Backends.
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/combine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "tests/testing/test_util.h"
#include "tests/unit/cuda/op_test_util.h"

namespace moe::cuda {
namespace {

using ::moe::cuda::testing::AsBytes;
using ::moe::cuda::testing::Bytes;
using ::moe::cuda::testing::DeviceBuffer;
using ::moe::cuda::testing::ExpectSameBits;
using ::moe::cuda::testing::NoDeviceReason;
using ::moe::cuda::testing::RandomValues;

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

struct Inputs {
  int64_t tokens, top_k, cols, ld;
  DType dtype;
  Bytes expert_out;  // [tokens * top_k, ld]
  std::vector<int32_t> slot_to_row;
  std::vector<int32_t> ids;
  std::vector<float> weights;  // empty: null
  Bytes out_init;              // [tokens, ld + 1]
};

class CudaCombineTest : public ::moe::cuda::testing::CudaOpTest {
 protected:

  void Check(const Inputs& in, bool add_to_out) {
    const int64_t out_ld = in.ld + 1;
    SCOPED_TRACE(::testing::Message()
                 << "combine tokens=" << in.tokens << " top_k=" << in.top_k << " cols=" << in.cols
                 << " ld=" << in.ld << " dtype=" << DTypeName(in.dtype)
                 << " weights=" << !in.weights.empty() << " add_to_out=" << add_to_out);
    Bytes want = in.out_init;
    CombineArgs args;
    args.tokens = in.tokens;
    args.top_k = in.top_k;
    args.cols = in.cols;
    args.dtype = in.dtype;
    args.expert_out = in.expert_out.data();
    args.expert_out_ld = in.ld;
    args.slot_to_row = in.slot_to_row.data();
    args.ids = in.ids.data();
    args.weights = in.weights.empty() ? nullptr : in.weights.data();
    args.add_to_out = add_to_out;
    args.out = want.data();
    args.out_ld = out_ld;
    const absl::Status cpu = cpu_->Combine(args);

    DeviceBuffer dy(in.expert_out), drows(AsBytes(in.slot_to_row)), dids(AsBytes(in.ids)),
        dw(AsBytes(in.weights)), dout(in.out_init), derr(Bytes(16, 0x5a));
    args.expert_out = dy.get();
    args.slot_to_row = drows.as<int32_t>();
    args.ids = dids.as<int32_t>();
    args.weights = in.weights.empty() ? nullptr : dw.as<float>();
    args.out = dout.get();
    const absl::Status launch = LaunchCombine(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    EXPECT_EQ(FinishCombine(args, derr.as<uint64_t>(), stream_), cpu);
    ExpectSameBits(dout.ToHost(), want, in.dtype);
    if (!cpu.ok()) ExpectSameBits(dout.ToHost(), in.out_init, in.dtype);
  }

};

// Rows a permutation of the slots (as ExpertOrder makes them), every `drop_every`-th slot
// dropped (0: none); ids in [0, num_experts), so small num_experts gives ties in a token.
Inputs MakeInputs(int64_t tokens, int64_t top_k, int64_t cols, int64_t pad, int64_t num_experts,
                  int drop_every, bool weights, DType dtype, std::mt19937_64& rng) {
  Inputs in;
  in.tokens = tokens;
  in.top_k = top_k;
  in.cols = cols;
  in.ld = cols + pad;
  in.dtype = dtype;
  const int64_t slots = tokens * top_k;
  in.expert_out = RandomValues(slots * in.ld, dtype, rng, -4.0f, 4.0f);
  in.slot_to_row.resize(slots);
  std::iota(in.slot_to_row.begin(), in.slot_to_row.end(), 0);
  std::shuffle(in.slot_to_row.begin(), in.slot_to_row.end(), rng);
  if (drop_every > 0) {
    for (int64_t s = 0; s < slots; ++s) {
      if (rng() % drop_every == 0) in.slot_to_row[s] = s % 2 == 0 ? -1 : -12345;
    }
  }
  in.ids.resize(slots);
  for (int32_t& id : in.ids) id = static_cast<int32_t>(rng() % num_experts);
  if (weights) {
    std::uniform_real_distribution<float> unit(-1.5f, 1.5f);
    in.weights.resize(slots);
    for (float& w : in.weights) w = unit(rng);
  }
  in.out_init = RandomValues(tokens * (in.ld + 1), dtype, rng, -8.0f, 8.0f);
  return in;
}

TEST_F(CudaCombineTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t tokens, top_k, cols, pad, num_experts;
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Case c : {Case{1, 1, 1, 0, 1}, Case{3, 2, 7, 1, 4}, Case{17, 8, 64, 8, 256},
                   Case{33, 4, 300, 3, 3}, Case{5, 16, 129, 0, 64}, Case{1001, 6, 96, 2, 160},
                   Case{7, 3, 4097, 5, 2}, Case{70001, 1, 5, 0, 8}}) {
      for (int drop_every : {0, 3}) {
        for (bool weights : {false, true}) {
          const Inputs in = MakeInputs(c.tokens, c.top_k, c.cols, c.pad, c.num_experts, drop_every,
                                       weights, dtype, rng);
          Check(in, false);
          Check(in, true);
        }
      }
    }
  }
}

TEST_F(CudaCombineTest, EveryTopKUpToEight) {
  std::mt19937_64 rng(11);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t top_k = 1; top_k <= 8; ++top_k) {
      const Inputs in = MakeInputs(37, top_k, 33, 1, 5, 4, true, dtype, rng);
      Check(in, top_k % 2 == 0);
    }
  }
}

TEST_F(CudaCombineTest, AllSlotsDroppedGivesZero) {
  std::mt19937_64 rng(13);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Inputs in = MakeInputs(9, 4, 20, 0, 8, 0, true, dtype, rng);
    std::fill(in.slot_to_row.begin(), in.slot_to_row.end(), -1);
    Check(in, false);
    Check(in, true);
  }
}

TEST_F(CudaCombineTest, BadSlotToRowIsReportedAndNothingIsWritten) {
  std::mt19937_64 rng(17);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Inputs in = MakeInputs(3, 2, 16, 0, 4, 0, true, dtype, rng);  // 6 slots: rows [0, 6)
    in.slot_to_row = {5, 0, 1, 2, 3, 4};                          // limit - 1: fine
    Check(in, false);
    in.slot_to_row = {0, 1, 6, 2, -1, 7};
    Check(in, false);
    in.slot_to_row = {0, 1, 2, 3, 4, kInt32Max};
    Check(in, true);
  }
}

// The dispatch and combine ops through the Backend interface (validation, the backend's stream
// and error words): bincount -> expert_order -> combine on both backends, equal bit for bit;
// the data errors come back as the CPU backend's Status (from the next Synchronize on the GPU).
class BackendPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoDeviceReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend(Device::Cpu());
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(cpu).value();
    absl::StatusOr<std::unique_ptr<Backend>> gpu = CreateBackend(Device::Cuda(0));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
  }

  void* Upload(const Bytes& host) {
    absl::StatusOr<void*> p = gpu_->Allocate(std::max<size_t>(host.size(), 1));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!host.empty()) EXPECT_TRUE(gpu_->CopyFromHost(*p, host.data(), host.size()).ok());
    owned_.push_back(*p);
    return *p;
  }
  Bytes Download(const void* p, size_t bytes) {
    Bytes out(bytes);
    EXPECT_TRUE(gpu_->CopyToHost(out.data(), p, bytes).ok());
    return out;
  }
  void TearDown() override {
    for (void* p : owned_) gpu_->Free(p);
  }

  std::unique_ptr<Backend> cpu_, gpu_;
  std::vector<void*> owned_;
};

TEST_F(BackendPipelineTest, DispatchAndCombineMatchTheCpuBackend) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  const int64_t tokens = 45, top_k = 4, num_experts = 16, cols = 40;
  const int64_t n = tokens * top_k;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 5 == 0 ? 3 : rng() % num_experts);
    std::vector<float> weights(n);
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    for (float& w : weights) w = unit(rng);
    const Bytes y = RandomValues(n * cols, dtype, rng, -2.0f, 2.0f);
    const Bytes out_init = RandomValues(tokens * cols, dtype, rng, -2.0f, 2.0f);

    std::vector<int64_t> counts(num_experts);
    std::vector<int32_t> sorted(n), rows(n);
    Bytes out = out_init;
    ASSERT_TRUE(cpu_->Bincount({n, ids.data(), num_experts, counts.data()}).ok());
    ASSERT_TRUE(
        cpu_->ExpertOrder({n, ids.data(), num_experts, counts.data(), sorted.data(), rows.data()})
            .ok());
    CombineArgs c;
    c.tokens = tokens;
    c.top_k = top_k;
    c.cols = cols;
    c.dtype = dtype;
    c.expert_out = y.data();
    c.expert_out_ld = cols;
    c.slot_to_row = rows.data();
    c.ids = ids.data();
    c.weights = weights.data();
    c.add_to_out = true;
    c.out = out.data();
    c.out_ld = cols;
    ASSERT_TRUE(cpu_->Combine(c).ok());

    auto* d_ids = static_cast<int32_t*>(Upload(AsBytes(ids)));
    auto* d_counts = static_cast<int64_t*>(Upload(Bytes(num_experts * 8)));
    auto* d_sorted = static_cast<int32_t*>(Upload(Bytes(n * 4)));
    auto* d_rows = static_cast<int32_t*>(Upload(Bytes(n * 4)));
    ASSERT_TRUE(gpu_->Bincount({n, d_ids, num_experts, d_counts}).ok());
    ASSERT_TRUE(gpu_->ExpertOrder({n, d_ids, num_experts, d_counts, d_sorted, d_rows}).ok());
    EXPECT_EQ(Download(d_sorted, n * 4), AsBytes(sorted));
    EXPECT_EQ(Download(d_rows, n * 4), AsBytes(rows));
    c.expert_out = Upload(y);
    c.slot_to_row = d_rows;
    c.ids = d_ids;
    c.weights = static_cast<const float*>(Upload(AsBytes(weights)));
    c.out = Upload(out_init);
    ASSERT_TRUE(gpu_->Combine(c).ok());
    ExpectSameBits(Download(c.out, out.size()), out, dtype);

    // Data errors: an overfull expert, then a slot_to_row past the rows.
    std::vector<int64_t> bad_counts = counts;
    bad_counts[3] -= 1;
    bad_counts[(3 + 1) % num_experts] += 1;
    const absl::Status cpu_order = cpu_->ExpertOrder(
        {n, ids.data(), num_experts, bad_counts.data(), sorted.data(), rows.data()});
    ASSERT_FALSE(cpu_order.ok());
    auto* d_bad_counts = static_cast<int64_t*>(Upload(AsBytes(bad_counts)));
    // Found on the device: reported by the next wait (backend.h).
    ASSERT_TRUE(gpu_->ExpertOrder({n, d_ids, num_experts, d_bad_counts, d_sorted, d_rows}).ok());
    EXPECT_EQ(gpu_->Synchronize(), cpu_order);
    std::vector<int32_t> bad_rows(n, 0);
    bad_rows[n - 2] = static_cast<int32_t>(n);
    c.slot_to_row = bad_rows.data();
    c.expert_out = y.data();
    c.ids = ids.data();
    c.weights = weights.data();
    Bytes cpu_out = out_init;
    c.out = cpu_out.data();
    const absl::Status cpu_combine = cpu_->Combine(c);
    ASSERT_FALSE(cpu_combine.ok());
    c.expert_out = Upload(y);
    c.slot_to_row = static_cast<const int32_t*>(Upload(AsBytes(bad_rows)));
    c.ids = d_ids;
    c.weights = static_cast<const float*>(Upload(AsBytes(weights)));
    c.out = Upload(out_init);
    ASSERT_TRUE(gpu_->Combine(c).ok());
    EXPECT_EQ(gpu_->Synchronize(), cpu_combine);
    ExpectSameBits(Download(c.out, out_init.size()), out_init, dtype);
  }
}

}  // namespace
}  // namespace moe::cuda
