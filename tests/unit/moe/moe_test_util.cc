#include "tests/unit/moe/moe_test_util.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_backend.h"
#include "tests/testing/test_util.h"

namespace moe::testing {
namespace {

std::vector<double> Scaled(int64_t n, double scale, DType dtype, std::mt19937_64& rng) {
  std::vector<double> v = RandomUniform(n, rng, -scale, scale);
  return RoundTo(v, dtype);
}

}  // namespace

absl::StatusOr<TestDevice> MakeCpuDevice(int threads) { return MakeDevice(Device::Cpu(), threads); }

absl::StatusOr<TestDevice> MakeDevice(Device device, int cpu_threads) {
  TestDevice dev;
  BackendOptions options;
  options.cpu_threads = cpu_threads;
  MOE_ASSIGN_OR_RETURN(dev.backend, CreateBackend(device, options));
  dev.allocator = std::make_unique<Allocator>(dev.backend.get());
  return dev;
}

absl::StatusOr<TestDevice> MakeTestDevice() {
  TestDevice dev;
  MOE_ASSIGN_OR_RETURN(dev.backend, CreateTestBackend());
  dev.allocator = std::make_unique<Allocator>(dev.backend.get());
  return dev;
}

Tensor HostTensors::Add(const std::vector<double>& values, DType dtype, Shape shape) {
  storage_.push_back(std::make_unique<std::vector<uint8_t>>(Encode(values, dtype)));
  return Tensor::Wrap(storage_.back()->data(), Device::Cpu(), dtype, std::move(shape));
}

MoeWeights ToMoeWeights(const MoeConfig& c, const NaiveMoeWeights& w, HostTensors* host) {
  const int64_t e = c.num_experts, d = c.hidden, i = c.inter;
  const int64_t s = c.num_shared_experts * c.shared_inter;
  MoeWeights m;
  m.gate = host->Add(w.gate, c.dtype, Shape({e, d}));
  if (c.use_expert_bias) m.expert_bias = host->Add(w.bias, DType::kF32, Shape({e}));
  for (int64_t x = 0; x < e; ++x) {
    m.w1.push_back(host->Add(w.w1[x], c.dtype, Shape({i, d})));
    m.w3.push_back(host->Add(w.w3[x], c.dtype, Shape({i, d})));
    m.w2.push_back(host->Add(w.w2[x], c.dtype, Shape({d, i})));
  }
  if (s > 0) {
    m.shared_w1 = host->Add(w.shared_w1, c.dtype, Shape({s, d}));
    m.shared_w3 = host->Add(w.shared_w3, c.dtype, Shape({s, d}));
    m.shared_w2 = host->Add(w.shared_w2, c.dtype, Shape({d, s}));
  }
  if (c.shared_gate) m.shared_gate = host->Add(w.shared_gate, c.dtype, Shape({1, d}));
  return m;
}

NaiveMoeWeights RandomWeights(const MoeConfig& c, std::mt19937_64& rng) {
  const int64_t e = c.num_experts, d = c.hidden, i = c.inter;
  const int64_t s = c.num_shared_experts * c.shared_inter;
  const DType t = c.dtype;
  NaiveMoeWeights w;
  w.gate = Scaled(e * d, 2.0 / std::sqrt(static_cast<double>(d)), t, rng);
  if (c.use_expert_bias) w.bias = Scaled(e, 0.1, t, rng);
  const double in_scale = std::sqrt(3.0 / d);
  for (int64_t x = 0; x < e; ++x) {
    w.w1.push_back(Scaled(i * d, in_scale, t, rng));
    w.w3.push_back(Scaled(i * d, in_scale, t, rng));
    w.w2.push_back(Scaled(d * i, std::sqrt(3.0 / i), t, rng));
  }
  if (s > 0) {
    w.shared_w1 = Scaled(s * d, in_scale, t, rng);
    w.shared_w3 = Scaled(s * d, in_scale, t, rng);
    w.shared_w2 = Scaled(d * s, std::sqrt(3.0 / s), t, rng);
  }
  if (c.shared_gate) w.shared_gate = Scaled(d, in_scale, t, rng);
  return w;
}

std::vector<double> RandomRoutableInput(const MoeConfig& c, const NaiveMoeWeights& w,
                                        int64_t tokens, std::mt19937_64& rng) {
  const int64_t d = c.hidden;
  std::vector<double> x(tokens * d);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int attempt = 0;; ++attempt) {
      const std::vector<double> row = RoundTo(RandomUniform(d, rng), c.dtype);
      if (NaiveRoute(c, w, row, 1).margin[0] >= kRoutingMargin || attempt == 1000) {
        std::copy(row.begin(), row.end(), x.begin() + t * d);
        break;
      }
    }
  }
  return x;
}

void RouteExplicitly(const MoeConfig& c, const std::vector<std::set<int>>& experts,
                     std::mt19937_64& rng, NaiveMoeWeights* w, std::vector<double>* x) {
  const int64_t e = c.num_experts, d = c.hidden;
  const auto tokens = static_cast<int64_t>(experts.size());
  w->gate.assign(e * d, 0.0);
  for (int64_t j = 0; j < e; ++j) w->gate[j * d + j] = 4.0;
  *x = RoundTo(RandomUniform(tokens * d, rng), c.dtype);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < e; ++j) (*x)[t * d + j] = experts[t].count(j) ? 1.0 : 0.0;
  }
}

absl::StatusOr<std::unique_ptr<MoeBlock>> MakeBlock(const MoeConfig& config,
                                                    const NaiveMoeWeights& w, TestDevice& dev) {
  HostTensors host;
  return MoeBlock::Create(config, ToMoeWeights(config, w, &host), dev.backend.get(),
                          dev.allocator.get());
}

absl::StatusOr<DeviceTensor> Upload(TestDevice& dev, const std::vector<double>& values, DType dtype,
                                    Shape shape) {
  const std::vector<uint8_t> bytes = Encode(values, dtype);
  DeviceTensor out;
  MOE_ASSIGN_OR_RETURN(out.buffer, dev.allocator->Allocate(bytes.size()));
  MOE_RETURN_IF_ERROR(dev.backend->CopyFromHost(out.buffer->data(), bytes.data(), bytes.size()));
  MOE_ASSIGN_OR_RETURN(out.tensor, Tensor::OnBuffer(*out.buffer, dtype, std::move(shape)));
  return out;
}

std::vector<uint8_t> DownloadBytes(Backend* backend, const Tensor& t) {
  std::vector<uint8_t> bytes(t.nbytes());
  if (!bytes.empty() && !backend->CopyToHost(bytes.data(), t.data(), bytes.size()).ok()) {
    bytes.clear();
  }
  return bytes;
}

std::vector<double> Download(Backend* backend, const Tensor& t) {
  const std::vector<uint8_t> bytes = DownloadBytes(backend, t);
  return Decode(bytes.data(), static_cast<int64_t>(bytes.size() / DTypeSize(t.dtype())), t.dtype());
}

absl::StatusOr<BlockOutput> RunBlock(MoeBlock* block, TestDevice& dev, const std::vector<double>& x,
                                     int64_t tokens) {
  const MoeConfig& c = block->config();
  MOE_ASSIGN_OR_RETURN(DeviceTensor in, Upload(dev, x, c.dtype, Shape({tokens, c.hidden})));
  MOE_ASSIGN_OR_RETURN(DeviceTensor out, Upload(dev, std::vector<double>(tokens * c.hidden, 0.0),
                                                c.dtype, Shape({tokens, c.hidden})));
  MOE_ASSIGN_OR_RETURN(Tensor result, block->Forward(in.tensor, out.tensor));
  BlockOutput o;
  o.bytes = DownloadBytes(dev.backend.get(), result);
  o.values = Decode(o.bytes.data(), tokens * c.hidden, c.dtype);
  return o;
}

MoeConfig SmallConfig(int64_t experts, int64_t top_k, int64_t hidden, int64_t inter, DType dtype) {
  MoeConfig c;
  c.num_experts = experts;
  c.top_k = top_k;
  c.hidden = hidden;
  c.inter = inter;
  c.dtype = dtype;
  return c;
}

void MoeBlockTest::SetUp() {
  auto dev = MakeTestDevice();
  if (!dev.ok()) GTEST_SKIP() << "no test backend: " << dev.status();
  dev_ = std::move(*dev);
  seed_ = TestSeed();
  rng_.seed(seed_);
}

void MoeBlockTest::TearDown() {
  if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
}

std::unique_ptr<MoeBlock> MoeBlockTest::Block(const MoeConfig& config, const NaiveMoeWeights& w) {
  auto block = MakeBlock(config, w, dev_);
  EXPECT_TRUE(block.ok()) << block.status();
  return block.ok() ? std::move(*block) : nullptr;
}

BlockOutput MoeBlockTest::Run(MoeBlock* block, const std::vector<double>& x, int64_t tokens) {
  auto got = RunBlock(block, dev_, x, tokens);
  EXPECT_TRUE(got.ok()) << got.status();
  return got.ok() ? std::move(*got) : BlockOutput{};
}

}  // namespace moe::testing
