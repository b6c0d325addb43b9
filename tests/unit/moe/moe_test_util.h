// Shared pieces of the MoE block tests: a CPU device, random weights and inputs in float64
// (rounded to what the block stores), host tensors over them, and a one-call Forward.
#ifndef MOE_TESTS_UNIT_MOE_MOE_TEST_UTIL_H_
#define MOE_TESTS_UNIT_MOE_MOE_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/layers/moe/moe_block.h"
#include "engine/layers/moe/moe_config.h"
#include "engine/layers/moe/moe_weights.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/unit/moe/naive_moe.h"

namespace moe::testing {

// A backend and its allocator. threads = 0: all cores.
struct TestDevice {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Allocator> allocator;
};
absl::StatusOr<TestDevice> MakeCpuDevice(int threads = 0);
// A backend on `device` (cpu_threads applies to the CPU only).
absl::StatusOr<TestDevice> MakeDevice(Device device, int cpu_threads = 0);
// The backend MOE_TEST_BACKEND names (tests/testing/test_backend.h; the CPU when unset).
absl::StatusOr<TestDevice> MakeTestDevice();

// Host tensors over float64 values stored in a dtype; owns the storage.
class HostTensors {
 public:
  Tensor Add(const std::vector<double>& values, DType dtype, Shape shape);

 private:
  std::vector<std::unique_ptr<std::vector<uint8_t>>> storage_;
};

// The block's weights over `host`: gate and expert/shared weights in config.dtype, the bias in
// f32 (holding config.dtype values). The values must already be representable (RandomWeights
// rounds them).
MoeWeights ToMoeWeights(const MoeConfig& config, const NaiveMoeWeights& w, HostTensors* host);

// Random weights scaled for unit-size activations, rounded to the stored dtypes.
NaiveMoeWeights RandomWeights(const MoeConfig& config, std::mt19937_64& rng);

// Gap below which a token's float64 routing could differ from the engine's fp32 routing.
constexpr double kRoutingMargin = 1e-4;

// x [T, D] uniform in [-1, 1), rounded to config.dtype. Tokens whose float64 routing has a
// decision margin below kRoutingMargin are drawn again, so the engine (fp32 logits from the
// same rounded inputs) must select exactly the reference's experts.
std::vector<double> RandomRoutableInput(const MoeConfig& config, const NaiveMoeWeights& w,
                                        int64_t tokens, std::mt19937_64& rng);

// Routes token t to experts[t] exactly: the gate becomes 4 * identity on the first E input
// dims (zero elsewhere) and x[t, j] = 1 for j in experts[t], 0 for the other j < E; columns
// from E on are random. Needs D > E and |experts[t]| == K.
void RouteExplicitly(const MoeConfig& config, const std::vector<std::set<int>>& experts,
                     std::mt19937_64& rng, NaiveMoeWeights* w, std::vector<double>* x);

absl::StatusOr<std::unique_ptr<MoeBlock>> MakeBlock(const MoeConfig& config,
                                                    const NaiveMoeWeights& w, TestDevice& dev);

// A device buffer holding `values` in `dtype`, and a view of it.
struct DeviceTensor {
  std::unique_ptr<Buffer> buffer;
  Tensor tensor;
};
absl::StatusOr<DeviceTensor> Upload(TestDevice& dev, const std::vector<double>& values, DType dtype,
                                    Shape shape);
std::vector<uint8_t> DownloadBytes(Backend* backend, const Tensor& t);
std::vector<double> Download(Backend* backend, const Tensor& t);

// The result of one Forward, both as values and as raw bits.
struct BlockOutput {
  std::vector<double> values;
  std::vector<uint8_t> bytes;
};
// Forward on fresh device copies of x [T, D] (values in config.dtype) into a fresh output.
absl::StatusOr<BlockOutput> RunBlock(MoeBlock* block, TestDevice& dev, const std::vector<double>& x,
                                     int64_t tokens);

// A small config with the given sizes and defaults elsewhere.
MoeConfig SmallConfig(int64_t experts, int64_t top_k, int64_t hidden, int64_t inter, DType dtype);

// Fixture: the MOE_TEST_BACKEND device (skipped when it is missing), a random generator seeded by
// TestSeed() (printed on failure so that MOE_TEST_SEED can replay it), and Forward helpers that
// fail the test on a bad Status.
class MoeBlockTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // nullptr (and a test failure) if Create fails.
  std::unique_ptr<MoeBlock> Block(const MoeConfig& config, const NaiveMoeWeights& w);
  // Empty (and a test failure) if Forward fails.
  BlockOutput Run(MoeBlock* block, const std::vector<double>& x, int64_t tokens);

  TestDevice dev_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_MOE_MOE_TEST_UTIL_H_
