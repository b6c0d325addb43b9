// The tensor sources of the loaders: RandomTensorSource's values (a pure function of seed, name
// and index, whatever the load order or thread count; the scale each role documents; the dtype
// asked for), its staging memory (slabs reused from one staging to the next), and
// CheckpointTensorSource giving CheckpointStaging's tensors and errors. Prints the drawing speed.
#include "engine/model/tensor_source.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/checkpoint_staging.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors_index.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace moe {
namespace {

ExpectedTensor Want(const std::string& name, Shape shape, TensorRole role) {
  ExpectedTensor t;
  t.name = name;
  t.shape = std::move(shape);
  t.role = role;
  return t;
}

std::vector<uint8_t> Bytes(const Tensor& t) {
  const uint8_t* p = static_cast<const uint8_t*>(t.data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

TEST(RandomTensorSourceTest, ValuesDependOnlyOnSeedNameAndIndex) {
  const ExpectedTensor a = Want("model.layers.0.self_attn.q_proj.weight", {64, 48},
                                TensorRole::kAttention);
  const ExpectedTensor b = Want("model.layers.0.self_attn.k_proj.weight", {64, 48},
                                TensorRole::kAttention);
  RandomTensorSource source(7, DType::kBF16);
  std::vector<uint8_t> a1, b1, a2, b2;
  {
    auto staging = source.NewStaging();
    a1 = Bytes(*staging->Load(a));
    b1 = Bytes(*staging->Load(b));
  }
  {
    auto staging = source.NewStaging();  // the other order
    b2 = Bytes(*staging->Load(b));
    a2 = Bytes(*staging->Load(a));
  }
  EXPECT_EQ(a1, a2);
  EXPECT_EQ(b1, b2);
  EXPECT_NE(a1, b1);  // another name, other values
  RandomTensorSource other_seed(8, DType::kBF16);
  EXPECT_NE(a1, Bytes(*other_seed.NewStaging()->Load(a)));
  // A same-named tensor of another shape starts with the same values (the index's stream).
  const ExpectedTensor a_small = Want(a.name, {4, 48}, a.role);
  std::vector<float> small(a_small.shape.numel()), big(a.shape.numel());
  RandomTensorSource::Fill(7, a_small, DType::kF32, small.data());
  RandomTensorSource::Fill(7, Want(a.name, {64, 48}, a.role), DType::kF32, big.data());
  EXPECT_TRUE(std::equal(small.begin(), small.end(), big.begin()));
}

TEST(RandomTensorSourceTest, SameBitsForAnyThreadCount) {
  // Large enough for the fill's OpenMP loop (more than 16 blocks of 1024 values), odd length.
  const ExpectedTensor want =
      Want("model.layers.3.mlp.experts.5.down_proj.weight", {257, 768}, TensorRole::kExpert);
  const int threads = omp_get_max_threads();
  std::vector<uint16_t> one(want.shape.numel()), many(want.shape.numel());
  omp_set_num_threads(1);
  RandomTensorSource::Fill(3, want, DType::kBF16, one.data());
  omp_set_num_threads(std::max(threads, 3));
  RandomTensorSource::Fill(3, want, DType::kBF16, many.data());
  omp_set_num_threads(threads);
  EXPECT_EQ(one, many);
}

TEST(RandomTensorSourceTest, DTypesRoundTheSameValues) {
  const ExpectedTensor want = Want("w", {33, 65}, TensorRole::kDenseMlp);  // odd: a partial group
  std::vector<float> f32(want.shape.numel());
  std::vector<uint16_t> b(want.shape.numel()), h(want.shape.numel());
  RandomTensorSource::Fill(1, want, DType::kF32, f32.data());
  RandomTensorSource::Fill(1, want, DType::kBF16, b.data());
  RandomTensorSource::Fill(1, want, DType::kF16, h.data());
  for (size_t i = 0; i < f32.size(); ++i) {
    ASSERT_EQ(b[i], FloatToBf16(f32[i]).bits) << i;
    ASSERT_EQ(h[i], FloatToF16(f32[i]).bits) << i;
  }
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    RandomTensorSource source(1, dtype);
    auto t = source.NewStaging()->Load(want);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype(), dtype);
    EXPECT_EQ(t->shape(), want.shape);
    EXPECT_EQ(t->device(), Device::Cpu());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 64, 0u);
  }
  RandomTensorSource ints(1, DType::kI32);
  auto t = ints.NewStaging()->Load(want);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.status().message(),
            "random weights: tensor \"w\" cannot be drawn in dtype i32 (f32, bf16 or f16)");
}

struct RoleCase {
  TensorRole role;
  Shape shape;
  double offset, bound;  // values within offset +- bound, spread over most of it
};

TEST(RandomTensorSourceTest, ScalesFollowTheRole) {
  const RoleCase cases[] = {
      {TensorRole::kEmbedding, {256, 64}, 0, 0.02 * std::sqrt(3.0)},
      {TensorRole::kNorm, {2048}, 1, 0.1},
      {TensorRole::kAttentionBias, {512}, 0, 0.02},
      {TensorRole::kRouterBias, {128}, 0, 0.01},
      {TensorRole::kAttention, {512, 2048}, 0, 1 / std::sqrt(2048.0)},
      {TensorRole::kExpert, {2048, 768}, 0, 1 / std::sqrt(768.0)},
      {TensorRole::kLmHead, {1000, 2048}, 0, 1 / std::sqrt(2048.0)},
  };
  for (const RoleCase& c : cases) {
    SCOPED_TRACE(TensorRoleName(c.role));
    const ExpectedTensor want = Want("t", c.shape, c.role);
    std::vector<float> v(want.shape.numel());
    RandomTensorSource::Fill(11, want, DType::kF32, v.data());
    double sum = 0, sq = 0, lo = 1e30, hi = -1e30;
    for (float x : v) {
      sum += x - c.offset;
      sq += (x - c.offset) * (x - c.offset);
      lo = std::min<double>(lo, x - c.offset);
      hi = std::max<double>(hi, x - c.offset);
    }
    const double n = static_cast<double>(v.size());
    EXPECT_LE(hi, c.bound * (1 + 1e-6));
    EXPECT_GE(lo, -c.bound * (1 + 1e-6));
    EXPECT_GT(hi, 0.95 * c.bound);
    EXPECT_LT(lo, -0.95 * c.bound);
    EXPECT_NEAR(sum / n, 0, 0.1 * c.bound);
    EXPECT_NEAR(std::sqrt(sq / n), c.bound / std::sqrt(3.0), 0.1 * c.bound);  // uniform's std
  }
}

TEST(RandomTensorSourceTest, RouterRowsHaveTheirOwnGain) {
  const int64_t experts = 128, in = 2048;
  const ExpectedTensor want = Want("model.layers.0.mlp.gate.weight", {experts, in},
                                   TensorRole::kRouter);
  std::vector<float> v(want.shape.numel());
  RandomTensorSource::Fill(5, want, DType::kF32, v.data());
  const double base = kRandomRouterGain / std::sqrt(static_cast<double>(in));
  const double spread = std::exp(kRandomRouterSpread * std::sqrt(3.0));
  double min_row = 1e30, max_row = 0;
  for (int64_t e = 0; e < experts; ++e) {
    float row_max = 0;
    for (int64_t j = 0; j < in; ++j) row_max = std::max(row_max, std::fabs(v[e * in + j]));
    EXPECT_LE(row_max, base * spread * (1 + 1e-6)) << e;
    EXPECT_GE(row_max, 0.95 * base / spread) << e;
    min_row = std::min<double>(min_row, row_max);
    max_row = std::max<double>(max_row, row_max);
  }
  EXPECT_GT(max_row / min_row, 1.3);  // the rows' gains differ
}

TEST(RandomTensorSourceTest, StagingsReuseTheSlabs) {
  RandomTensorSource source(1, DType::kBF16);
  const ExpectedTensor small = Want("a", {1024, 1024}, TensorRole::kExpert);  // 2 MiB
  constexpr size_t kPerSlab = RandomTensorSource::kSlabBytes / (size_t{2} << 20);
  std::vector<const uint8_t*> slabs;  // where the first staging's slabs start
  {
    auto staging = source.NewStaging();
    for (size_t i = 0; i < kPerSlab + 8; ++i) {  // two slabs
      auto t = staging->Load(small);
      ASSERT_TRUE(t.ok()) << t.status();
      if (i % kPerSlab == 0) slabs.push_back(static_cast<const uint8_t*>(t->data()));
    }
  }
  ASSERT_EQ(slabs.size(), 2u);
  const auto in_first_slabs = [&](const void* p) {
    for (const uint8_t* s : slabs) {
      if (p >= s && p < s + RandomTensorSource::kSlabBytes) return true;
    }
    return false;
  };
  for (int round = 0; round < 3; ++round) {
    auto staging = source.NewStaging();
    for (size_t i = 0; i < kPerSlab + 8; ++i) {
      auto t = staging->Load(small);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_TRUE(in_first_slabs(t->data())) << "round " << round << ", tensor " << i;
    }
  }
  // A tensor larger than a slab: memory of its own.
  const ExpectedTensor large =
      Want("b", {static_cast<int64_t>(RandomTensorSource::kSlabBytes / 2) + 64},
           TensorRole::kNorm);
  auto staging = source.NewStaging();
  auto t = staging->Load(large);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(in_first_slabs(t->data()));
  EXPECT_GT(Bf16ToFloat(static_cast<const bf16*>(t->data())[large.shape.numel() - 1]), 0.85f);
}

TEST(RandomTensorSourceTest, WeightDTypeOfTheConfig) {
  ModelConfig c;
  EXPECT_EQ(RandomWeightDType(c), DType::kBF16);  // no dtype in config.json
  c.has_dtype = true;
  c.dtype = DType::kF32;
  EXPECT_EQ(RandomWeightDType(c), DType::kF32);
  c.dtype = DType::kF16;
  EXPECT_EQ(RandomWeightDType(c), DType::kF16);
  c.dtype = DType::kI32;
  EXPECT_EQ(RandomWeightDType(c), DType::kBF16);
}

// Not a pass/fail check: how fast values are drawn here (recorded in test.xml).
TEST(RandomTensorSourceTest, DrawingSpeed) {
  const ExpectedTensor want = Want("model.layers.0.mlp.experts.0.gate_proj.weight",
                                   {int64_t{128} << 20}, TensorRole::kExpert);  // 256 MiB bf16
  std::vector<uint16_t> out(want.shape.numel());
  RandomTensorSource::Fill(1, want, DType::kBF16, out.data());  // pages touched
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    RandomTensorSource::Fill(rep + 2, want, DType::kBF16, out.data());
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                              .count());
  }
  const double gbps = out.size() * 2 / best / 1e9;
  std::printf("random bf16 drawing: %.2f GB/s with %d threads\n", gbps, omp_get_max_threads());
  RecordProperty("random_bf16_gbps", absl::StrCat(gbps));
}

TEST(CheckpointTensorSourceTest, GivesTheStagingsTensorsAndErrors) {
  auto config = LoadModelConfig("models/qwen3-moe-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  auto checkpoint = SafetensorsCheckpoint::OpenDir("models/qwen3-moe-tiny");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  CheckpointTensorSource source(**checkpoint);
  auto staging = source.NewStaging();
  CheckpointStaging direct;
  for (const ExpectedTensor& want : ExpectedTensors(*config)) {
    auto a = staging->Load(want);
    auto b = direct.Load(**checkpoint, want);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(a->shape(), b->shape());
    EXPECT_EQ(a->dtype(), b->dtype());
    EXPECT_EQ(Bytes(*a), Bytes(*b)) << want.name;
  }
  ExpectedTensor missing = Want("model.nothing.weight", {4}, TensorRole::kNorm);
  ExpectedTensor reshaped = ExpectedTensors(*config)[1];
  reshaped.shape = {reshaped.shape.numel() + 1};
  for (const ExpectedTensor& bad : {missing, reshaped}) {
    auto a = staging->Load(bad);
    auto b = direct.Load(**checkpoint, bad);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.status(), b.status());
  }
}

}  // namespace
}  // namespace moe
