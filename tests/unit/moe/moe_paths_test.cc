// MOE_SEMANTICS section 7, expert paths and combine, through the whole block: 7.5 (the
// deterministic combine), 7.11 (fast-path preconditions), 7.14 (summation order); plus T = 0,
// determinism, no allocation once the workspace is reserved, and expert weights kept only
// packed.
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

using MoePathsTest = MoeBlockTest;

// Crafted bf16 experts: with x = e_0, expert j's output is exactly column 0 of w2[j]:
// g = 16, u = 1/16, silu(16) rounds to 16 in bf16, h = 1, y = w2[j][:, 0].
void MakeExactExperts(const MoeConfig& c, const std::vector<std::vector<double>>& columns,
                      const std::vector<double>& shared_column, NaiveMoeWeights* w) {
  const int64_t d = c.hidden, i = c.inter;
  for (int64_t j = 0; j < c.num_experts; ++j) {
    w->w1[j].assign(i * d, 0.0);
    w->w3[j].assign(i * d, 0.0);
    w->w2[j].assign(d * i, 0.0);
    w->w1[j][0] = 16.0;
    w->w3[j][0] = 1.0 / 16;
    for (int64_t r = 0; r < d; ++r) w->w2[j][r * i] = columns[j][r];
  }
  if (c.num_shared_experts > 0) {
    const int64_t s = c.num_shared_experts * c.shared_inter;
    w->shared_w1.assign(s * d, 0.0);
    w->shared_w3.assign(s * d, 0.0);
    w->shared_w2.assign(d * s, 0.0);
    w->shared_w1[0] = 16.0;
    w->shared_w3[0] = 1.0 / 16;
    for (int64_t r = 0; r < d; ++r) w->shared_w2[r * s] = shared_column[r];
  }
}

// 7.5 (a) and 7.14. Uniform softmax over E=4 gives scores 1/4; route_scale 4 makes every
// weight exactly 1; ties pick experts {0, 1, 2}. Column 0 of the three outputs is 1, b, b
// with b = 3 * 2^-10:
//   routed = bf16(1 + b + b in fp32) = 1.0078125   (sequential bf16 adds would give 1.0)
// and with a shared output s = 2^-8:
//   out = bf16(routed + s) = bf16(1.01171875) = 1.015625 (tie to even), the upstream order,
//   while the one-rounding bf16(s + 1 + b + b) = 1.0078125.
TEST_F(MoePathsTest, CombineRoundsOnceThenAddsShared) {
  const double b = 3.0 / 1024;
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "with shared" : "routed only");
    MoeConfig c = SmallConfig(4, 3, 4, 2, DType::kBF16);
    c.route_scale = 4.0f;
    c.num_shared_experts = shared ? 1 : 0;
    c.shared_inter = shared ? 2 : 0;
    NaiveMoeWeights w = RandomWeights(c, rng_);
    w.gate.assign(4 * 4, 0.0);
    MakeExactExperts(c, {{1, 0.5, 0, 0}, {b, 0.25, 0, 0}, {b, 0, 0, 0}, {64, 64, 64, 64}},
                     {1.0 / 256, 0, -1, 0}, &w);
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const BlockOutput out = Run(block.get(), {1, 0, 0, 0}, 1);
    ASSERT_EQ(out.values.size(), 4u);
    if (shared) {
      EXPECT_EQ(out.values[0], 1.015625);
      EXPECT_NE(out.values[0], RoundTo({1.0 / 256 + 1 + 2 * b}, DType::kBF16)[0]);
      EXPECT_EQ(out.values[1], 0.75);
      EXPECT_EQ(out.values[2], -1.0);
    } else {
      EXPECT_EQ(out.values[0], 1.0078125);
      EXPECT_EQ(out.values[1], 0.75);
      EXPECT_EQ(out.values[2], 0.0);
    }
  }
}

// 7.5 (b): 100 runs of a DeepSeek-V3-debug-like layer give identical bits.
TEST_F(MoePathsTest, RepeatedRunsAreBitIdentical) {
  MoeConfig c = SmallConfig(8, 3, 256, 256, DType::kBF16);
  c.num_shared_experts = 2;
  c.shared_inter = 256;
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  const int64_t t = 16;
  const std::vector<double> x = RoundTo(RandomUniform(t * 256, rng_), c.dtype);
  auto block = Block(c, w);
  ASSERT_NE(block, nullptr);
  const BlockOutput first = Run(block.get(), x, t);
  for (int run = 1; run < 100; ++run) {
    ASSERT_EQ(Run(block.get(), x, t).bytes, first.bytes) << "run " << run;
  }
}

// 7.11: the batched path runs exactly when every count equals one C > 0, and computes the
// same bits as the grouped path on the same input.
TEST_F(MoePathsTest, BatchedPathPreconditionIsExact) {
  struct PathCase {
    std::vector<int> experts_of_token;  // K = 1
    int64_t num_experts;
    ExpertPath want;
  };
  const std::vector<PathCase> cases = {
      {{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}, 3, ExpertPath::kBatched},     // [4, 4, 4]
      {{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 2}, 3, ExpertPath::kGrouped},  // [4, 4, 5]
      {{2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0}, 3, ExpertPath::kGrouped},     // [8, 0, 4]
      {{}, 3, ExpertPath::kNone},                                          // [0, 0, 0]
      {{0, 0, 0, 0}, 1, ExpertPath::kBatched},                             // [4]
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const PathCase& pc : cases) {
      SCOPED_TRACE(
          absl::StrCat(DTypeName(dtype), " E=", pc.num_experts, " T=", pc.experts_of_token.size()));
      const MoeConfig c = SmallConfig(pc.num_experts, 1, 16, 24, dtype);
      NaiveMoeWeights w = RandomWeights(c, rng_);
      std::vector<std::set<int>> experts;
      for (int j : pc.experts_of_token) experts.push_back({j});
      std::vector<double> x;
      RouteExplicitly(c, experts, rng_, &w, &x);
      const auto t = static_cast<int64_t>(experts.size());
      auto block = Block(c, w);
      ASSERT_NE(block, nullptr);
      const BlockOutput fast = Run(block.get(), x, t);
      EXPECT_EQ(block->last_trace().expert_path, pc.want);
      std::vector<int64_t> want_counts(pc.num_experts, 0);
      for (int j : pc.experts_of_token) ++want_counts[j];
      EXPECT_EQ(block->last_trace().counts, want_counts);
      block->set_batched_path_enabled(false);
      const BlockOutput general = Run(block.get(), x, t);
      EXPECT_EQ(block->last_trace().expert_path, t == 0 ? ExpertPath::kNone : ExpertPath::kGrouped);
      EXPECT_EQ(fast.bytes, general.bytes);
      EXPECT_LE(MaxRelError(fast.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));
      const MoeCounters& n = block->counters();
      EXPECT_EQ(n.batched_expert_calls, pc.want == ExpertPath::kBatched ? 1 : 0);
      EXPECT_EQ(n.grouped_expert_calls,
                (pc.want == ExpertPath::kGrouped ? 1 : 0) + (t > 0 ? 1 : 0));
    }
  }
}

// 7.11 with forced balance: T*K divisible by E takes the batched path, otherwise grouped.
TEST_F(MoePathsTest, ForcedBalanceTakesTheBatchedPathOnEqualCounts) {
  MoeConfig c = SmallConfig(4, 2, 32, 16, DType::kBF16);
  c.force_balanced = true;
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  auto block = Block(c, w);
  ASSERT_NE(block, nullptr);
  for (int64_t t : {1, 2, 6, 8, 64}) {
    const std::vector<double> x = RoundTo(RandomUniform(t * 32, rng_), c.dtype);
    const BlockOutput fast = Run(block.get(), x, t);
    const bool equal = (t * 2) % 4 == 0;
    EXPECT_EQ(block->last_trace().expert_path, equal ? ExpertPath::kBatched : ExpertPath::kGrouped)
        << "T=" << t;
    block->set_batched_path_enabled(false);
    EXPECT_EQ(Run(block.get(), x, t).bytes, fast.bytes) << "T=" << t;
    block->set_batched_path_enabled(true);
    EXPECT_LE(MaxRelError(fast.values, NaiveMoe(c, w, x, t)), BlockTol(c.dtype));
  }
}

// T = 0 is a valid call that touches nothing.
TEST_F(MoePathsTest, ZeroTokens) {
  MoeConfig c = SmallConfig(4, 2, 16, 8, DType::kBF16);
  c.num_shared_experts = 1;
  c.shared_inter = 8;
  auto block = Block(c, RandomWeights(c, rng_));
  ASSERT_NE(block, nullptr);
  const BlockOutput out = Run(block.get(), {}, 0);
  EXPECT_TRUE(out.values.empty());
  EXPECT_EQ(block->last_trace().tokens, 0);
  EXPECT_EQ(block->last_trace().expert_path, ExpertPath::kNone);
  EXPECT_EQ(block->last_trace().combine_path, CombinePath::kNone);
  EXPECT_EQ(block->last_trace().counts, std::vector<int64_t>(4, 0));
}

// Determinism: the same call twice, and 1 vs 2 threads, give identical bits, on both paths.
TEST_F(MoePathsTest, DeterministicAcrossCallsAndThreads) {
  for (bool forced : {false, true}) {
    MoeConfig c = SmallConfig(8, 2, 256, 128, DType::kBF16);
    c.force_balanced = forced;
    c.num_shared_experts = 1;
    c.shared_inter = 128;
    c.shared_gate = true;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 128;
    const std::vector<double> x = RoundTo(RandomUniform(t * 256, rng_), c.dtype);
    std::vector<uint8_t> first;
    for (int threads : {1, 2}) {
      auto dev = MakeCpuDevice(threads);
      ASSERT_TRUE(dev.ok());
      auto block = MakeBlock(c, w, *dev);
      ASSERT_TRUE(block.ok());
      auto a = RunBlock(block->get(), *dev, x, t);
      auto b = RunBlock(block->get(), *dev, x, t);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ((*block)->last_trace().expert_path,
                forced ? ExpertPath::kBatched : ExpertPath::kGrouped);
      EXPECT_EQ(a->bytes, b->bytes);
      if (first.empty()) first = a->bytes;
      EXPECT_EQ(a->bytes, first) << threads << " threads";
    }
  }
}

// Counts kept on the device (GroupedGemmArgs::counts): the same bits as the grouped path with
// host offsets, for softmax / sigmoid-with-groups routers, shared experts, odd T and both
// dtypes; the trace has no counts then. Capacity mode and T above the limit still take the
// counts to the host.
TEST_F(MoePathsTest, CountsOnDeviceGiveTheGroupedPathsBits) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (bool deepseek : {false, true}) {
      MoeConfig c = SmallConfig(16, 4, 72, 40, dtype);
      if (deepseek) {
        c.score = ScoreFunction::kSigmoid;
        c.use_expert_bias = true;
        c.num_groups = 4;
        c.topk_groups = 2;
        c.renormalize = true;
        c.route_scale = 2.5f;
        c.num_shared_experts = 1;
        c.shared_inter = 24;
      }
      const NaiveMoeWeights w = RandomWeights(c, rng_);
      auto host = Block(c, w);
      auto device = Block(c, w);
      ASSERT_TRUE(host != nullptr && device != nullptr);
      host->set_batched_path_enabled(false);
      device->set_counts_on_device_max_tokens(100);
      for (int64_t t : {1, 3, 16, 67}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), deepseek ? " deepseek" : " softmax", " T=", t));
        const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
        const BlockOutput want = Run(host.get(), x, t);
        const BlockOutput got = Run(device.get(), x, t);
        EXPECT_EQ(got.bytes, want.bytes);
        EXPECT_EQ(device->last_trace().expert_path, ExpertPath::kGrouped);
        EXPECT_TRUE(device->last_trace().counts.empty());
        EXPECT_LE(MaxRelError(got.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));
      }
    }
  }
  MoeConfig c = SmallConfig(4, 2, 32, 16, DType::kBF16);
  c.capacity_factor = 0.5f;
  auto block = Block(c, RandomWeights(c, rng_));
  ASSERT_NE(block, nullptr);
  block->set_counts_on_device_max_tokens(64);
  Run(block.get(), RoundTo(RandomUniform(8 * 32, rng_), c.dtype), 8);
  EXPECT_EQ(block->last_trace().counts.size(), 4u);
  // Above the limit the counts go to the host as usual.
  c.capacity_factor = 0.0f;
  block = Block(c, RandomWeights(c, rng_));
  ASSERT_NE(block, nullptr);
  block->set_counts_on_device_max_tokens(4);
  Run(block.get(), RoundTo(RandomUniform(4 * 32, rng_), c.dtype), 4);
  EXPECT_TRUE(block->last_trace().counts.empty());
  Run(block.get(), RoundTo(RandomUniform(5 * 32, rng_), c.dtype), 5);
  EXPECT_EQ(block->last_trace().counts.size(), 4u);
}

// After ReserveTokens(T), or one Forward at T, Forwards at <= T tokens allocate nothing, on
// every path (grouped, batched, copied combine, capacity drops).
TEST_F(MoePathsTest, NoAllocationAfterReserve) {
  for (bool capacity : {false, true}) {
    MoeConfig c = SmallConfig(4, 2, 32, 16, DType::kBF16);
    c.num_shared_experts = 1;
    c.shared_inter = 16;
    c.shared_gate = true;
    c.capacity_factor = capacity ? 0.5f : 0.0f;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const int64_t max_t = 64;
    const std::vector<double> x = RoundTo(RandomUniform(max_t * 32, rng_), c.dtype);
    auto in = Upload(dev_, x, c.dtype, Shape({max_t, 32}));
    auto out = Upload(dev_, x, c.dtype, Shape({max_t, 32}));
    ASSERT_TRUE(in.ok() && out.ok());
    ASSERT_TRUE(block->ReserveTokens(max_t).ok());
    const int64_t before = dev_.allocator->allocation_count();
    for (int64_t t : {64, 1, 0, 37, 64, 8}) {
      auto xt = in->tensor.Rows(0, t);
      auto ot = out->tensor.Rows(0, t);
      ASSERT_TRUE(xt.ok() && ot.ok());
      ASSERT_TRUE(block->Forward(*xt, *ot).ok());
      ASSERT_TRUE(block->Forward(*xt, *xt).ok());  // copied combine
    }
    EXPECT_EQ(dev_.allocator->allocation_count(), before);
    // A larger T grows the workspace once; after that it is quiet again.
    auto big = Upload(dev_, std::vector<double>(128 * 32, 0.25), c.dtype, Shape({128, 32}));
    ASSERT_TRUE(big.ok());
    const int64_t grown = dev_.allocator->allocation_count();
    ASSERT_TRUE(block->Forward(big->tensor, big->tensor).ok());
    EXPECT_EQ(dev_.allocator->allocation_count(), grown + 1);
    ASSERT_TRUE(block->Forward(big->tensor, big->tensor).ok());
    ASSERT_TRUE(block->Forward(*in->tensor.Rows(0, 3), *out->tensor.Rows(0, 3)).ok());
    EXPECT_EQ(dev_.allocator->allocation_count(), grown + 1);
  }
}

// The routed experts are stored once, packed: after Create the allocator holds only the router
// weights and the shared gate (no plain w13 / w2t), and the packed copies are about the size
// of the fused weights. Updates borrow one expert's scratch and give it back; only a partial
// w1 / w3 update reads w13 back.
TEST_F(MoePathsTest, ExpertWeightsAreKeptOnlyPacked) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    // Multiples of 64 so that no packed layout needs padding.
    const int64_t e = 8, d = 64, i = 64, s = 64;
    MoeConfig c = SmallConfig(e, 2, d, i, dtype);
    c.use_expert_bias = true;
    c.num_shared_experts = 1;
    c.shared_inter = s;
    c.shared_gate = true;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const size_t before = dev_.allocator->bytes_in_use();
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const size_t size = DTypeSize(dtype);
    // The allocator holds only the expert bias; the gates are packed like the experts.
    const size_t bias = e * sizeof(float);
    EXPECT_EQ(dev_.allocator->bytes_in_use() - before, bias);
    const size_t routed = e * (d * 2 * i + i * d) * size;
    const size_t gates = e * d * sizeof(float) + d * size;
    const size_t fused = routed + (d * 2 * s + s * d) * size + gates;
    EXPECT_GE(block->packed_weight_bytes(), fused);
    EXPECT_LE(block->packed_weight_bytes(), fused + fused / 4);
    EXPECT_EQ(block->counters().w13_unpacks, 0);

    HostTensors host;
    const NaiveMoeWeights fresh = RandomWeights(c, rng_);
    const Tensor w1 = host.Add(fresh.w1[3], dtype, Shape({i, d}));
    const Tensor w3 = host.Add(fresh.w3[3], dtype, Shape({i, d}));
    const Tensor w2 = host.Add(fresh.w2[3], dtype, Shape({d, i}));
    struct Step {
      const Tensor *w1, *w3, *w2;
      int64_t unpacks;
    };
    for (const Step& step : {Step{&w1, nullptr, nullptr, 1}, Step{nullptr, &w3, nullptr, 2},
                             Step{&w1, &w3, nullptr, 2}, Step{nullptr, nullptr, &w2, 2},
                             Step{nullptr, nullptr, nullptr, 2}}) {
      const int64_t allocations = dev_.allocator->allocation_count();
      ASSERT_TRUE(block->UpdateExpertWeights(3, step.w1, step.w3, step.w2).ok());
      EXPECT_EQ(block->counters().w13_unpacks, step.unpacks);
      EXPECT_EQ(dev_.allocator->bytes_in_use() - before, bias);
      const bool any = step.w1 != nullptr || step.w3 != nullptr || step.w2 != nullptr;
      EXPECT_EQ(dev_.allocator->allocation_count(), allocations + (any ? 1 : 0));
    }
  }
}

}  // namespace
}  // namespace moe::testing
