// Validation of the configuration, the weights (Create), and Forward / UpdateExpertWeights
// arguments: every branch at its exact limit (limit - 1, limit, limit + 1), messages asserted.
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

MoeConfig Base() {
  MoeConfig c;
  c.num_experts = 8;
  c.top_k = 2;
  c.hidden = 32;
  c.inter = 16;
  c.dtype = DType::kF32;
  return c;
}

// OK, or InvalidArgument with exactly `message`.
void ExpectConfig(const MoeConfig& c, const std::string& message) {
  const absl::Status s = c.Validate();
  if (message.empty()) {
    EXPECT_TRUE(s.ok()) << s;
  } else {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message(), message);
  }
}

TEST(MoeConfigTest, BaseIsValid) { ExpectConfig(Base(), ""); }

TEST(MoeConfigTest, TopKAtTheNumberOfExperts) {
  MoeConfig c = Base();
  c.top_k = 7;
  ExpectConfig(c, "");
  c.top_k = 8;
  ExpectConfig(c, "");
  c.top_k = 9;
  ExpectConfig(c, "moe: top_k=9 exceeds num_experts=8");
  c.force_balanced = true;  // MOE_SEMANTICS 7.10: repeated ids are fine when forced
  ExpectConfig(c, "");
}

TEST(MoeConfigTest, NonPositiveSizes) {
  struct Field {
    const char* name;
    int64_t MoeConfig::*member;
  };
  for (const Field& f :
       {Field{"num_experts", &MoeConfig::num_experts}, Field{"top_k", &MoeConfig::top_k},
        Field{"hidden", &MoeConfig::hidden}, Field{"inter", &MoeConfig::inter},
        Field{"num_groups", &MoeConfig::num_groups},
        Field{"topk_groups", &MoeConfig::topk_groups}}) {
    SCOPED_TRACE(f.name);
    MoeConfig c = Base();
    c.top_k = 1;  // so that num_experts = 1 is valid
    c.*f.member = 1;
    ExpectConfig(c, "");
    c.*f.member = 0;
    ExpectConfig(c, std::string("moe: ") + f.name + "=0 must be positive");
    c.*f.member = -1;
    ExpectConfig(c, std::string("moe: ") + f.name + "=-1 must be positive");
  }
}

TEST(MoeConfigTest, TopkGroupsAtTheNumberOfGroups) {
  MoeConfig c = Base();
  c.num_groups = 4;
  c.topk_groups = 3;
  ExpectConfig(c, "");
  c.topk_groups = 4;
  ExpectConfig(c, "");
  c.topk_groups = 5;
  ExpectConfig(c, "moe: topk_groups=5 exceeds num_groups=4");
  c.num_groups = 1;
  c.topk_groups = 2;
  ExpectConfig(c, "moe: topk_groups=2 exceeds num_groups=1");
}

TEST(MoeConfigTest, ExpertsDivisibleByGroups) {
  MoeConfig c = Base();
  c.num_groups = 4;
  c.top_k = 2;
  c.num_experts = 7;
  ExpectConfig(c, "moe: num_experts=7 is not divisible by num_groups=4");
  c.num_experts = 8;
  ExpectConfig(c, "");
  c.num_experts = 9;
  ExpectConfig(c, "moe: num_experts=9 is not divisible by num_groups=4");
}

TEST(MoeConfigTest, GroupsNeedTwoExperts) {
  MoeConfig c = Base();
  c.num_groups = 4;  // 2 per group
  ExpectConfig(c, "");
  c.num_groups = 8;  // 1 per group
  c.topk_groups = 2;
  ExpectConfig(c,
               "moe: num_experts=8 / num_groups=8 leaves 1 expert per group; group scores need "
               "at least 2");
}

// MOE_SEMANTICS 7.9: E=8, G=4, limit 1 holds 2 candidates; K=3 must be rejected at load.
TEST(MoeConfigTest, GroupLimitHoldsTopK) {
  MoeConfig c = Base();
  c.num_groups = 4;
  c.topk_groups = 1;
  c.top_k = 1;
  ExpectConfig(c, "");
  c.top_k = 2;
  ExpectConfig(c, "");
  c.top_k = 3;
  ExpectConfig(c, "moe: topk_groups=1 groups of 2 experts hold 2 candidates, fewer than top_k=3");
  c.topk_groups = 2;
  ExpectConfig(c, "");
}

TEST(MoeConfigTest, Dtype) {
  MoeConfig c = Base();
  c.dtype = DType::kBF16;
  ExpectConfig(c, "");
  c.dtype = DType::kF16;
  ExpectConfig(c, "moe: dtype=f16 is not supported (f32, bf16)");
  c.dtype = DType::kI32;
  ExpectConfig(c, "moe: dtype=i32 is not supported (f32, bf16)");
}

TEST(MoeConfigTest, SharedExperts) {
  MoeConfig c = Base();
  c.num_shared_experts = 2;
  c.shared_inter = 1;
  ExpectConfig(c, "");
  c.shared_inter = 0;
  ExpectConfig(c, "moe: num_shared_experts=2 needs shared_inter > 0, got 0");
  c.shared_inter = -1;
  ExpectConfig(c, "moe: shared_inter=-1 is negative");
  c.shared_inter = 4;
  c.num_shared_experts = -1;
  ExpectConfig(c, "moe: num_shared_experts=-1 is negative");
  c.num_shared_experts = 0;
  c.shared_gate = true;
  ExpectConfig(c, "moe: shared_gate needs num_shared_experts > 0, got 0");
  c.num_shared_experts = 1;
  ExpectConfig(c, "");
}

TEST(MoeConfigTest, CapacityFactor) {
  MoeConfig c = Base();
  c.capacity_factor = 0.0f;
  ExpectConfig(c, "");
  c.capacity_factor = 1.25f;
  ExpectConfig(c, "");
  c.capacity_factor = -1.0f;
  ExpectConfig(c, "moe: capacity_factor=-1 must be 0 (dropless) or finite and positive");
  c.capacity_factor = std::numeric_limits<float>::quiet_NaN();
  ExpectConfig(c, "moe: capacity_factor=nan must be 0 (dropless) or finite and positive");
  c.capacity_factor = std::numeric_limits<float>::infinity();
  ExpectConfig(c, "moe: capacity_factor=inf must be 0 (dropless) or finite and positive");
}

TEST(MoeConfigTest, RouteScale) {
  MoeConfig c = Base();
  c.route_scale = 0.0f;
  ExpectConfig(c, "");
  c.route_scale = std::numeric_limits<float>::infinity();
  ExpectConfig(c, "moe: route_scale=inf is not finite");
  c.route_scale = std::numeric_limits<float>::quiet_NaN();
  ExpectConfig(c, "moe: route_scale=nan is not finite");
}

TEST(MoeConfigTest, ToStringNamesEveryField) {
  MoeConfig c = Base();
  c.score = ScoreFunction::kSigmoid;
  c.num_groups = 4;
  c.topk_groups = 2;
  c.route_scale = 2.5f;
  EXPECT_EQ(c.ToString(),
            "moe{num_experts=8 top_k=2 hidden=32 inter=16 score=sigmoid expert_bias=no "
            "num_groups=4 topk_groups=2 renormalize=no route_scale=2.5 score_before_experts=no "
            "num_shared_experts=0 shared_inter=0 shared_gate=no force_balanced=no "
            "capacity_factor=0 router_gemm=fp32 route_weights=fp32 dtype=f32}");
  c.router_gemm = RouterGemm::kRunDType;
  c.route_weights = RouteWeights::kRunDType;
  EXPECT_NE(c.ToString().find(" router_gemm=run_dtype route_weights=run_dtype "), std::string::npos)
      << c.ToString();
}

// --- Create: every weight tensor against the config. ---

// A tensor that is not given (rank 0, no data), like a default-constructed one.
const Tensor kAbsent = Tensor::Wrap(nullptr, Device::Cpu(), DType::kF32, Shape());

class MoeCreateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dev = MakeTestDevice();
    if (!dev.ok()) GTEST_SKIP() << "no test backend: " << dev.status();
    dev_ = std::move(*dev);
    config_ = Base();
    config_.hidden = 32;
    config_.inter = 64;
    config_.num_shared_experts = 1;
    config_.shared_inter = 16;
    config_.shared_gate = true;
    config_.use_expert_bias = true;
    std::mt19937_64 rng(1);
    weights_ = ToMoeWeights(config_, RandomWeights(config_, rng), &host_);
  }

  absl::Status Create(const MoeConfig& c, const MoeWeights& w) {
    return MoeBlock::Create(c, w, dev_.backend.get(), dev_.allocator.get()).status();
  }

  void ExpectError(const MoeWeights& w, const std::string& message) {
    const absl::Status s = Create(config_, w);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message(), message);
  }

  Tensor Zeros(DType dtype, Shape shape) {
    return host_.Add(std::vector<double>(shape.numel(), 0.0), dtype, shape);
  }

  TestDevice dev_;
  MoeConfig config_;
  HostTensors host_;
  MoeWeights weights_;
};

TEST_F(MoeCreateTest, ValidWeights) { EXPECT_TRUE(Create(config_, weights_).ok()); }

TEST_F(MoeCreateTest, InvalidConfigIsReportedFirst) {
  MoeConfig c = config_;
  c.top_k = 9;
  EXPECT_EQ(Create(c, weights_).message(), "moe: top_k=9 exceeds num_experts=8");
}

TEST_F(MoeCreateTest, ExpertShapes) {
  MoeWeights w = weights_;
  w.w2[3] = Zeros(DType::kF32, Shape({32, 63}));
  ExpectError(w, "moe: w2[3] has shape [32, 63], expected [32, 64]");
  w.w2[3] = Zeros(DType::kF32, Shape({32, 65}));
  ExpectError(w, "moe: w2[3] has shape [32, 65], expected [32, 64]");
  w = weights_;
  w.w1[0] = Zeros(DType::kF32, Shape({32, 64}));  // transposed
  ExpectError(w, "moe: w1[0] has shape [32, 64], expected [64, 32]");
  w = weights_;
  w.w3[7] = Zeros(DType::kF32, Shape({64, 32, 1}));
  ExpectError(w, "moe: w3[7] has shape [64, 32, 1], expected [64, 32]");
}

TEST_F(MoeCreateTest, ExpertCount) {
  MoeWeights w = weights_;
  w.w1.pop_back();
  ExpectError(w, "moe: w1 has 7 tensors, expected num_experts=8");
  w = weights_;
  w.w2.push_back(w.w2[0]);
  ExpectError(w, "moe: w2 has 9 tensors, expected num_experts=8");
}

TEST_F(MoeCreateTest, GateAndBias) {
  MoeWeights w = weights_;
  w.gate = Zeros(DType::kF32, Shape({7, 32}));
  ExpectError(w, "moe: gate has shape [7, 32], expected [8, 32]");
  w = weights_;
  w.expert_bias = kAbsent;
  ExpectError(w, "moe: expert_bias is missing");
  w.expert_bias = Zeros(DType::kF32, Shape({9}));
  ExpectError(w, "moe: expert_bias has shape [9], expected [8]");
  MoeConfig c = config_;
  c.use_expert_bias = false;
  const absl::Status s = Create(c, weights_);
  EXPECT_EQ(s.message(), "moe: expert_bias is given but use_expert_bias is false");
}

TEST_F(MoeCreateTest, Dtypes) {
  MoeWeights w = weights_;
  w.gate = Zeros(DType::kI32, Shape({8, 32}));
  ExpectError(w, "moe: gate has dtype i32, expected f32, bf16 or f16");
  w = weights_;
  w.w1[2] = Zeros(DType::kI64, Shape({64, 32}));
  ExpectError(w, "moe: w1[2] has dtype i64, expected f32, bf16 or f16");
  // Any float dtype converts.
  w = weights_;
  w.w1[2] = Zeros(DType::kBF16, Shape({64, 32}));
  w.w3[2] = Tensor::Wrap(w.w3[2].data(), Device::Cpu(), DType::kF32, Shape({64, 32}));
  EXPECT_TRUE(Create(config_, w).ok());
}

TEST_F(MoeCreateTest, WeightsMustBeHostTensors) {
  MoeWeights w = weights_;
  w.w2[1] = Tensor::Wrap(w.w2[1].data(), Device::Cuda(0), DType::kF32, Shape({32, 64}));
  ExpectError(w, "moe: w2[1] is on cuda:0, expected a host (cpu) tensor");
}

TEST_F(MoeCreateTest, SharedExperts) {
  MoeWeights w = weights_;
  w.shared_w2 = Zeros(DType::kF32, Shape({32, 17}));
  ExpectError(w, "moe: shared_w2 has shape [32, 17], expected [32, 16]");
  w = weights_;
  w.shared_w1 = kAbsent;
  ExpectError(w, "moe: shared_w1 is missing");
  w = weights_;
  w.shared_gate = Zeros(DType::kF32, Shape({32}));
  ExpectError(w, "moe: shared_gate has shape [32], expected [1, 32]");
  MoeConfig c = config_;
  c.shared_gate = false;
  EXPECT_EQ(Create(c, weights_).message(),
            "moe: shared_gate is given but config.shared_gate is false");
  c.num_shared_experts = 0;
  MoeWeights no_gate = weights_;
  no_gate.shared_gate = kAbsent;
  EXPECT_EQ(Create(c, no_gate).message(), "moe: shared_w1 is given but num_shared_experts is 0");
}

// --- Forward and UpdateExpertWeights arguments. ---

TEST_F(MoeCreateTest, ForwardArguments) {
  auto block = MoeBlock::Create(config_, weights_, dev_.backend.get(), dev_.allocator.get());
  ASSERT_TRUE(block.ok()) << block.status();
  auto make = [&](DType t, Shape s) { return Upload(dev_, std::vector<double>(s.numel()), t, s); };
  auto x = make(DType::kF32, Shape({4, 32}));
  auto out = make(DType::kF32, Shape({4, 32}));
  ASSERT_TRUE(x.ok() && out.ok());
  EXPECT_TRUE((*block)->Forward(x->tensor, out->tensor).ok());

  auto expect = [&](const Tensor& xt, const Tensor& ot, const std::string& message) {
    const absl::Status s = (*block)->Forward(xt, ot).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message(), message);
  };
  for (int64_t d : {31, 33}) {
    auto bad = make(DType::kF32, Shape({4, d}));
    ASSERT_TRUE(bad.ok());
    expect(bad->tensor, out->tensor,
           absl::StrCat("moe: x has shape [4, ", d, "], expected [T, 32]"));
    expect(x->tensor, bad->tensor,
           absl::StrCat("moe: out has shape [4, ", d, "], expected [4, 32]"));
  }
  for (int64_t t : {3, 5}) {
    auto bad = make(DType::kF32, Shape({t, 32}));
    ASSERT_TRUE(bad.ok());
    expect(x->tensor, bad->tensor,
           absl::StrCat("moe: out has shape [", t, ", 32], expected [4, 32]"));
  }
  auto flat = make(DType::kF32, Shape({128}));
  expect(flat->tensor, out->tensor, "moe: x has shape [128], expected [T, 32]");
  auto half = make(DType::kBF16, Shape({4, 32}));
  expect(half->tensor, out->tensor, "moe: x has dtype bf16, expected f32 (config.dtype)");
  expect(x->tensor, half->tensor, "moe: out has dtype bf16, expected f32 (config.dtype)");
  const Device here = dev_.backend->device();
  const Device other = here.type == DeviceType::kCpu ? Device::Cuda(0) : Device::Cpu();
  const Tensor remote = Tensor::Wrap(x->tensor.data(), other, DType::kF32, Shape({4, 32}));
  const std::string where =
      absl::StrCat(" is on ", other.ToString(), ", expected ", here.ToString(), " (the backend's device)");
  expect(remote, out->tensor, absl::StrCat("moe: x", where));
  expect(x->tensor, remote, absl::StrCat("moe: out", where));
}

TEST_F(MoeCreateTest, UpdateArguments) {
  auto block = MoeBlock::Create(config_, weights_, dev_.backend.get(), dev_.allocator.get());
  ASSERT_TRUE(block.ok()) << block.status();
  const Tensor w1 = Zeros(DType::kF32, Shape({64, 32}));
  const Tensor bad = Zeros(DType::kF32, Shape({64, 33}));
  EXPECT_TRUE((*block)->UpdateExpertWeights(7, &w1, nullptr, nullptr).ok());
  for (int64_t e : {-1, 8}) {
    const absl::Status s = (*block)->UpdateExpertWeights(e, &w1, nullptr, nullptr);
    EXPECT_EQ(s.message(), absl::StrCat("moe: expert=", e, " is outside [0, num_experts=8)"));
  }
  EXPECT_EQ((*block)->UpdateExpertWeights(2, &w1, &bad, nullptr).message(),
            "moe: w3[2] has shape [64, 33], expected [64, 32]");
  EXPECT_EQ((*block)->UpdateExpertWeights(2, nullptr, nullptr, &w1).message(),
            "moe: w2[2] has shape [64, 32], expected [32, 64]");
  // A failed update changes nothing.
  EXPECT_EQ((*block)->counters().w13_rebuilds, 9);
  EXPECT_EQ((*block)->counters().w2t_rebuilds, 8);
  EXPECT_EQ((*block)->counters().w13_packs, 9);
  EXPECT_EQ((*block)->counters().w2t_packs, 8);
}

}  // namespace
}  // namespace moe::testing
