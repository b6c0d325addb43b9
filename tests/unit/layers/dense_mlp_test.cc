#include "engine/layers/mlp/dense_mlp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/registry.h"
#include "tests/testing/test_util.h"
#include "tests/unit/layers/layer_test_util.h"
#include "tests/testing/tolerances.h"

namespace moe::testing {
namespace {

using ::testing::HasSubstr;

DenseMlpConfig MakeConfig(int64_t d, int64_t i, DType dtype) {
  DenseMlpConfig c;
  c.hidden = d;
  c.inter = i;
  c.dtype = dtype;
  return c;
}

// Float64 weights in HF layout, already representable in the run dtype.
struct NaiveWeights {
  std::vector<double> gate, up, down;
};

NaiveWeights RandomWeights(const DenseMlpConfig& c, std::mt19937_64& rng) {
  const auto linear = [&](int64_t rows, int64_t cols) {
    std::vector<double> w = RandomUniform(rows * cols, rng);
    for (double& x : w) x *= 2.0 / std::sqrt(static_cast<double>(cols));
    return RoundTo(w, c.dtype);
  };
  return {linear(c.inter, c.hidden), linear(c.inter, c.hidden), linear(c.hidden, c.inter)};
}

// HF semantics in float64: down(silu(gate x) * up x) per token.
// `magnitude` (if given) gets sum_j |down[o, j] act[j]| per output: the size of the terms the
// down projection sums, which bounds its rounding error even where they cancel.
std::vector<double> NaiveMlp(const DenseMlpConfig& c, const NaiveWeights& w,
                             const std::vector<double>& x,
                             std::vector<double>* magnitude = nullptr) {
  const int64_t d = c.hidden, in = c.inter, t = static_cast<int64_t>(x.size()) / d;
  std::vector<double> out(t * d, 0.0), act(in);
  if (magnitude != nullptr) magnitude->assign(t * d, 0.0);
  for (int64_t r = 0; r < t; ++r) {
    const double* xr = x.data() + r * d;
    for (int64_t j = 0; j < in; ++j) {
      double g = 0, u = 0;
      for (int64_t k = 0; k < d; ++k) {
        g += w.gate[j * d + k] * xr[k];
        u += w.up[j * d + k] * xr[k];
      }
      act[j] = g / (1.0 + std::exp(-g)) * u;
    }
    for (int64_t o = 0; o < d; ++o) {
      for (int64_t j = 0; j < in; ++j) {
        out[r * d + o] += w.down[o * in + j] * act[j];
        if (magnitude != nullptr) (*magnitude)[r * d + o] += std::abs(w.down[o * in + j] * act[j]);
      }
    }
  }
  return out;
}

// Host tensors over encoded values; owns the storage.
class HostTensors {
 public:
  Tensor Add(const std::vector<double>& values, DType dtype, Shape shape) {
    storage_.push_back(std::make_unique<std::vector<uint8_t>>(Encode(values, dtype)));
    return Tensor::Wrap(storage_.back()->data(), Device::Cpu(), dtype, std::move(shape));
  }

 private:
  std::vector<std::unique_ptr<std::vector<uint8_t>>> storage_;
};

DenseMlpWeights ToWeights(const DenseMlpConfig& c, const NaiveWeights& w, HostTensors* host) {
  DenseMlpWeights out;
  out.gate_proj = host->Add(w.gate, c.dtype, Shape{c.inter, c.hidden});
  out.up_proj = host->Add(w.up, c.dtype, Shape{c.inter, c.hidden});
  out.down_proj = host->Add(w.down, c.dtype, Shape{c.hidden, c.inter});
  return out;
}

// One CPU backend (with `threads` threads) and its allocator.
struct Cpu {
  explicit Cpu(int threads = 0) {
    BackendOptions options;
    options.cpu_threads = threads;
    auto b = CreateBackend(Device::Cpu(), options);
    EXPECT_TRUE(b.ok()) << b.status();
    backend = std::move(*b);
    allocator = std::make_unique<Allocator>(backend.get());
  }
  DeviceTensor Upload(const std::vector<double>& v, DType dtype, Shape shape) {
    const std::vector<uint8_t> bytes = Encode(v, dtype);
    DeviceTensor t;
    auto buffer = allocator->Allocate(std::max<size_t>(bytes.size(), 1));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    t.buffer = std::move(*buffer);
    EXPECT_TRUE(backend->CopyFromHost(t.buffer->data(), bytes.data(), bytes.size()).ok());
    t.tensor = *Tensor::OnBuffer(*t.buffer, dtype, std::move(shape));
    return t;
  }
  std::vector<uint8_t> Bytes(const Tensor& t) {
    std::vector<uint8_t> bytes(t.nbytes());
    EXPECT_TRUE(backend->CopyToHost(bytes.data(), t.data(), bytes.size()).ok());
    return bytes;
  }
  std::vector<double> Download(const Tensor& t) {
    return Decode(Bytes(t).data(), t.numel(), t.dtype());
  }

  std::unique_ptr<Backend> backend;
  std::unique_ptr<Allocator> allocator;
};

class DenseMlpTest : public ::testing::Test {
 public:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
  }

  Cpu cpu_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// (dtype, hidden, inter, tokens)
using Case = std::tuple<DType, int64_t, int64_t, int64_t>;

class DenseMlpReferenceTest : public DenseMlpTest, public ::testing::WithParamInterface<Case> {};

TEST_P(DenseMlpReferenceTest, MatchesFloat64Reference) {
  const auto [dtype, d, in, t] = GetParam();
  const DenseMlpConfig c = MakeConfig(d, in, dtype);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  auto layer =
      DenseMlp::Create(c, ToWeights(c, w, &host), cpu_.backend.get(), cpu_.allocator.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  const std::vector<double> x = RoundTo(RandomUniform(t * d, rng_), dtype);
  DeviceTensor dx = cpu_.Upload(x, dtype, Shape{t, d});
  DeviceTensor dout = cpu_.Upload(std::vector<double>(t * d, 0.0), dtype, Shape{t, d});
  ASSERT_TRUE((*layer)->Forward(dx.tensor, dout.tensor).ok());
  std::vector<double> magnitude;
  const std::vector<double> want = NaiveMlp(c, w, x, &magnitude);
  const std::vector<double> got = cpu_.Download(dout.tensor);
  // MaxRelError, except that the scale is at least the largest summed term magnitude: with few
  // outputs (D = 1, T = 1) all of them may be small by cancellation, which is no kernel error.
  const double want_max = std::abs(*std::max_element(
      want.begin(), want.end(), [](double a, double b) { return std::abs(a) < std::abs(b); }));
  const double scale = std::max(want_max, *std::max_element(magnitude.begin(), magnitude.end()));
  EXPECT_LE(MaxRelError(got, want) * std::max(want_max, 1e-30) / std::max(scale, 1e-30),
            BlockTol(dtype));

  // In place (out aliases x) gives the same bits.
  const std::vector<uint8_t> separate = cpu_.Bytes(dout.tensor);
  const absl::Status in_place = (*layer)->Forward(dx.tensor, dx.tensor);
  ASSERT_TRUE(in_place.ok()) << in_place;
  EXPECT_EQ(cpu_.Bytes(dx.tensor), separate);
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const auto [dtype, d, in, t] = info.param;
  return absl::StrCat(DTypeName(dtype), "_D", d, "_I", in, "_T", t);
}

INSTANTIATE_TEST_SUITE_P(All, DenseMlpReferenceTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Values(1, 5, 33),
                                            ::testing::Values(1, 7, 70),
                                            ::testing::Values(1, 3, 17)),
                         CaseName);

TEST_F(DenseMlpTest, ZeroTokensDoesNothing) {
  const DenseMlpConfig c = MakeConfig(5, 7, DType::kBF16);
  HostTensors host;
  auto layer = DenseMlp::Create(c, ToWeights(c, RandomWeights(c, rng_), &host), cpu_.backend.get(),
                                cpu_.allocator.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  const int64_t before = cpu_.allocator->allocation_count();
  const Tensor empty = Tensor::Wrap(nullptr, Device::Cpu(), DType::kBF16, Shape{0, 5});
  const absl::Status s = (*layer)->Forward(empty, empty);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(cpu_.allocator->allocation_count(), before);
}

TEST_F(DenseMlpTest, OneAndTwoThreadsGiveIdenticalBits) {
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const DenseMlpConfig c = MakeConfig(67, 129, dtype);
    const NaiveWeights w = RandomWeights(c, rng_);
    const std::vector<double> x = RoundTo(RandomUniform(13 * c.hidden, rng_), dtype);
    std::vector<std::vector<uint8_t>> results;
    for (const int threads : {1, 2}) {
      Cpu cpu(threads);
      HostTensors host;
      auto layer =
          DenseMlp::Create(c, ToWeights(c, w, &host), cpu.backend.get(), cpu.allocator.get());
      ASSERT_TRUE(layer.ok()) << layer.status();
      DeviceTensor dx = cpu.Upload(x, dtype, Shape{13, c.hidden});
      DeviceTensor dout =
          cpu.Upload(std::vector<double>(x.size(), 0.0), dtype, Shape{13, c.hidden});
      ASSERT_TRUE((*layer)->Forward(dx.tensor, dout.tensor).ok());
      results.push_back(cpu.Bytes(dout.tensor));
    }
    EXPECT_EQ(results[0], results[1]);
  }
}

TEST_F(DenseMlpTest, ForwardAllocatesNothingAfterReserve) {
  const DenseMlpConfig c = MakeConfig(33, 70, DType::kBF16);
  HostTensors host;
  auto layer = DenseMlp::Create(c, ToWeights(c, RandomWeights(c, rng_), &host), cpu_.backend.get(),
                                cpu_.allocator.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  ASSERT_TRUE((*layer)->ReserveTokens(8).ok());
  DeviceTensor dx =
      cpu_.Upload(RoundTo(RandomUniform(8 * 33, rng_), c.dtype), c.dtype, Shape{8, 33});
  DeviceTensor dout = cpu_.Upload(std::vector<double>(8 * 33, 0.0), c.dtype, Shape{8, 33});
  const int64_t before = cpu_.allocator->allocation_count();
  for (const int64_t t : {8, 1, 5}) {
    const Tensor x = Tensor::Wrap(dx.tensor.data(), Device::Cpu(), c.dtype, Shape{t, 33});
    const Tensor out = Tensor::Wrap(dout.tensor.data(), Device::Cpu(), c.dtype, Shape{t, 33});
    ASSERT_TRUE((*layer)->Forward(x, out).ok());
  }
  EXPECT_EQ(cpu_.allocator->allocation_count(), before);
}

TEST_F(DenseMlpTest, ConfigErrorsAtTheLimits) {
  EXPECT_TRUE(MakeConfig(1, 1, DType::kF32).Validate().ok());
  EXPECT_TRUE(MakeConfig(1, 1, DType::kBF16).Validate().ok());
  absl::Status s = MakeConfig(0, 1, DType::kF32).Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("dense_mlp: hidden=0 must be > 0"));
  s = MakeConfig(-1, 1, DType::kF32).Validate();
  EXPECT_THAT(std::string(s.message()), HasSubstr("dense_mlp: hidden=-1 must be > 0"));
  s = MakeConfig(1, 0, DType::kF32).Validate();
  EXPECT_THAT(std::string(s.message()), HasSubstr("dense_mlp: inter=0 must be > 0"));
  s = MakeConfig(1, 1, DType::kF16).Validate();
  EXPECT_THAT(std::string(s.message()), HasSubstr("dense_mlp: dtype=f16 must be f32 or bf16"));
}

TEST_F(DenseMlpTest, WeightErrorsNameTheTensorAndBothShapes) {
  const DenseMlpConfig c = MakeConfig(5, 7, DType::kF32);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  const DenseMlpWeights good = ToWeights(c, w, &host);
  Backend* b = cpu_.backend.get();
  Allocator* a = cpu_.allocator.get();
  ASSERT_TRUE(DenseMlp::Create(c, good, b, a).ok());
  const auto message = [&](const DenseMlpWeights& weights) {
    auto layer = DenseMlp::Create(c, weights, b, a);
    EXPECT_FALSE(layer.ok());
    EXPECT_EQ(layer.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(layer.status().message());
  };
  // One row too many / too few, one column too many.
  std::vector<double> big(8 * 6, 0.0);
  DenseMlpWeights bad = good;
  bad.gate_proj = host.Add(big, c.dtype, Shape{8, 5});
  EXPECT_THAT(message(bad), HasSubstr("dense_mlp: gate_proj has shape [8, 5], expected [7, 5]"));
  bad = good;
  bad.up_proj = host.Add(big, c.dtype, Shape{6, 5});
  EXPECT_THAT(message(bad), HasSubstr("dense_mlp: up_proj has shape [6, 5], expected [7, 5]"));
  bad = good;
  bad.down_proj = host.Add(big, c.dtype, Shape{5, 8});
  EXPECT_THAT(message(bad), HasSubstr("dense_mlp: down_proj has shape [5, 8], expected [5, 7]"));
  bad = good;
  bad.down_proj = host.Add(big, c.dtype, Shape{7, 5});  // gate's shape, not down's
  EXPECT_THAT(message(bad), HasSubstr("dense_mlp: down_proj has shape [7, 5], expected [5, 7]"));
  bad = good;
  const Tensor missing;
  bad.up_proj = missing;
  EXPECT_THAT(message(bad), HasSubstr("dense_mlp: up_proj is missing"));
  bad = good;
  std::vector<int32_t> ints(7 * 5, 0);
  bad.gate_proj = Tensor::Wrap(ints.data(), Device::Cpu(), DType::kI32, Shape{7, 5});
  EXPECT_THAT(message(bad),
              HasSubstr("dense_mlp: gate_proj has dtype i32, expected f32, bf16 or f16"));
  // Weights of another float dtype than the run dtype are converted.
  DenseMlpConfig bf16_config = c;
  bf16_config.dtype = DType::kBF16;
  EXPECT_TRUE(DenseMlp::Create(bf16_config, good, b, a).ok());
}

TEST_F(DenseMlpTest, ForwardErrorsNameTheTensor) {
  const DenseMlpConfig c = MakeConfig(5, 7, DType::kBF16);
  HostTensors host;
  auto layer = DenseMlp::Create(c, ToWeights(c, RandomWeights(c, rng_), &host), cpu_.backend.get(),
                                cpu_.allocator.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::vector<uint8_t> storage(4 * 6 * 4);
  const auto view = [&](DType dtype, Shape shape) {
    return Tensor::Wrap(storage.data(), Device::Cpu(), dtype, std::move(shape));
  };
  const Tensor x = view(DType::kBF16, Shape{3, 5});
  EXPECT_THAT(std::string((*layer)->Forward(view(DType::kBF16, Shape{3, 6}), x).message()),
              HasSubstr("dense_mlp: x has shape [3, 6], expected [T, 5]"));
  EXPECT_THAT(std::string((*layer)->Forward(view(DType::kBF16, Shape{3, 4}), x).message()),
              HasSubstr("dense_mlp: x has shape [3, 4], expected [T, 5]"));
  EXPECT_THAT(std::string((*layer)->Forward(view(DType::kBF16, Shape{15}), x).message()),
              HasSubstr("dense_mlp: x has shape [15], expected [T, 5]"));
  EXPECT_THAT(std::string((*layer)->Forward(x, view(DType::kBF16, Shape{2, 5})).message()),
              HasSubstr("dense_mlp: out has shape [2, 5], expected [3, 5] (x's shape)"));
  EXPECT_THAT(std::string((*layer)->Forward(x, view(DType::kBF16, Shape{4, 5})).message()),
              HasSubstr("dense_mlp: out has shape [4, 5], expected [3, 5] (x's shape)"));
  EXPECT_THAT(std::string((*layer)->Forward(view(DType::kF32, Shape{3, 5}), x).message()),
              HasSubstr("dense_mlp: x has dtype f32, expected bf16"));
  EXPECT_THAT(std::string((*layer)->Forward(x, view(DType::kF32, Shape{3, 5})).message()),
              HasSubstr("dense_mlp: out has dtype f32, expected bf16"));
  EXPECT_THAT(std::string((*layer)->ReserveTokens(-1).message()),
              HasSubstr("dense_mlp: ReserveTokens: tokens=-1 must be >= 0"));
  EXPECT_TRUE((*layer)->ReserveTokens(0).ok());
}

}  // namespace
}  // namespace moe::testing
