// MoeConfig::router_gemm and route_weights: Hugging Face's bf16 router precisions next to the
// fp32 (torchtitan) default, against the float64 reference and against exact formulas.
//   - f32 runs: every mode gives the same bits;
//   - a near-tie that the two gate precisions route differently, each as the reference does;
//   - a bf16 run holds the gate and the expert bias as bf16 values, whatever the mode;
//   - run-dtype weights: rounded weights, each weighted expert output rounded, exactly;
//   - run-dtype shared gate: logit, sigmoid and product rounded, exactly;
//   - determinism: same bits run to run, block to block and thread count to thread count;
//   - the shipped families' configs select transformers' precisions.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/model_config.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

float Bf16(double v) { return RoundToBf16(static_cast<float>(v)); }

class MoeRouterPrecisionTest : public MoeBlockTest {
 protected:
  // Forward of a block made from explicit host weights (which may differ from config.dtype).
  BlockOutput RunWeights(const MoeConfig& c, const MoeWeights& weights,
                         const std::vector<double>& x, int64_t tokens,
                         std::vector<int32_t>* ids = nullptr) {
    auto block = MoeBlock::Create(c, weights, dev_.backend.get(), dev_.allocator.get());
    EXPECT_TRUE(block.ok()) << block.status();
    if (!block.ok()) return {};
    BlockOutput out = Run(block->get(), x, tokens);
    std::vector<float> w;
    if (ids != nullptr) {
      EXPECT_TRUE((*block)->CopyLastRouting(ids, &w).ok());
    }
    return out;
  }

  std::vector<int32_t> Ids(const MoeConfig& c, const NaiveMoeWeights& w,
                           const std::vector<double>& x, int64_t tokens) {
    std::unique_ptr<MoeBlock> block = Block(c, w);
    if (block == nullptr) return {};
    Run(block.get(), x, tokens);
    std::vector<int32_t> ids;
    std::vector<float> weights;
    EXPECT_TRUE(block->CopyLastRouting(&ids, &weights).ok());
    return ids;
  }
};

const RouterGemm kGemms[] = {RouterGemm::kFp32, RouterGemm::kRunDType};
const RouteWeights kWeights[] = {RouteWeights::kFp32, RouteWeights::kRunDType};

// A Qwen2-MoE-like config with every router feature the modes touch.
MoeConfig FullConfig(DType dtype) {
  MoeConfig c = SmallConfig(8, 2, 33, 24, dtype);
  c.renormalize = true;
  c.num_shared_experts = 1;
  c.shared_inter = 16;
  c.shared_gate = true;
  return c;
}

// f32 runs: the modes describe bf16 rounding points only, so every combination gives the
// bits of the default.
TEST_F(MoeRouterPrecisionTest, F32RunIgnoresThePrecisionModes) {
  for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    MoeConfig c = FullConfig(DType::kF32);
    c.score = score;
    c.use_expert_bias = score == ScoreFunction::kSigmoid;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 19;
    const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
    std::unique_ptr<MoeBlock> base = Block(c, w);
    ASSERT_NE(base, nullptr);
    const BlockOutput want = Run(base.get(), x, t);
    for (RouterGemm g : kGemms) {
      for (RouteWeights rw : kWeights) {
        c.router_gemm = g;
        c.route_weights = rw;
        SCOPED_TRACE(c.ToString());
        std::unique_ptr<MoeBlock> block = Block(c, w);
        ASSERT_NE(block, nullptr);
        EXPECT_EQ(Run(block.get(), x, t).bytes, want.bytes);
      }
    }
  }
}

// Expert 1's logit is 1 + 2^-10, expert 0's is 1: fp32 routes to expert 1; rounded to bf16
// both are 1.0 (the bf16 spacing at 1 is 2^-7), and the tie goes to the lower id, expert 0.
// HF Mixtral / Qwen bf16 (run-dtype gate) would pick expert 0 where torchtitan picks expert 1.
TEST_F(MoeRouterPrecisionTest, NearTieRoutesAsEachGatePrecisionSays) {
  MoeConfig c = SmallConfig(4, 1, 16, 8, DType::kBF16);
  NaiveMoeWeights w = RandomWeights(c, rng_);
  const int64_t d = c.hidden, t = 3;
  std::fill(w.gate.begin(), w.gate.end(), 0.0);
  w.gate[0 * d + 0] = 1.0;
  w.gate[1 * d + 0] = 1.0;
  w.gate[1 * d + 1] = std::ldexp(1.0, -10);
  w.gate[2 * d + 0] = -1.0;
  w.gate[3 * d + 1] = -1.0;
  std::vector<double> x = RoundTo(RandomUniform(t * d, rng_), c.dtype);
  for (int64_t r = 0; r < t; ++r) {
    x[r * d + 0] = 1.0;
    x[r * d + 1] = 1.0;
  }
  c.router_gemm = RouterGemm::kFp32;
  EXPECT_EQ(Ids(c, w, x, t), std::vector<int32_t>(t, 1));
  EXPECT_EQ(NaiveRoute(c, w, x, t).ids, std::vector<int32_t>(t, 1));
  c.router_gemm = RouterGemm::kRunDType;
  EXPECT_EQ(Ids(c, w, x, t), std::vector<int32_t>(t, 0));
  EXPECT_EQ(NaiveRoute(c, w, x, t).ids, std::vector<int32_t>(t, 0));
  // The same logits in an f32 run: no rounding, expert 1 in both modes.
  c.dtype = DType::kF32;
  EXPECT_EQ(Ids(c, w, x, t), std::vector<int32_t>(t, 1));
}

// A gate given in f32 whose expert-1 row holds 1 + 2^-10 (not a bf16 value): a bf16 run holds
// it as 1.0 in both modes (a tie with expert 0, which wins), an f32 run keeps it (expert 1).
TEST_F(MoeRouterPrecisionTest, Bf16RunHoldsTheGateAsBf16Values) {
  for (RouterGemm g : kGemms) {
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      MoeConfig c = SmallConfig(4, 1, 16, 8, dtype);
      c.router_gemm = g;
      SCOPED_TRACE(c.ToString());
      NaiveMoeWeights w = RandomWeights(c, rng_);
      const int64_t d = c.hidden, t = 2;
      std::vector<double> gate(4 * d, 0.0);
      gate[0 * d + 0] = 1.0;
      gate[1 * d + 0] = 1.0 + std::ldexp(1.0, -10);
      gate[2 * d + 0] = -1.0;
      gate[3 * d + 0] = -2.0;
      std::vector<double> x = RoundTo(RandomUniform(t * d, rng_), dtype);
      for (int64_t r = 0; r < t; ++r) {
        x[r * d + 0] = 1.0;
        for (int64_t j = 1; j < d; ++j) x[r * d + j] = 0.0;
      }
      HostTensors host;
      MoeWeights weights = ToMoeWeights(c, w, &host);
      weights.gate = host.Add(gate, DType::kF32, Shape({4, d}));
      std::vector<int32_t> ids;
      RunWeights(c, weights, x, t, &ids);
      EXPECT_EQ(ids, std::vector<int32_t>(t, dtype == DType::kBF16 ? 0 : 1));
      w.gate = gate;
      EXPECT_EQ(NaiveRoute(c, w, x, t).ids, ids);
    }
  }
}

// Equal scores; the f32 bias gives expert 1 0.5 + 2^-12 and expert 0 0.5: bf16 holds both as
// 0.5 (a tie, expert 0), f32 keeps the difference (expert 1). HF DeepSeek-V3 in bf16 holds
// e_score_correction_bias in bf16 (model.to casts the buffer).
TEST_F(MoeRouterPrecisionTest, Bf16RunHoldsTheExpertBiasAsBf16Values) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    MoeConfig c = SmallConfig(4, 1, 16, 8, dtype);
    c.score = ScoreFunction::kSigmoid;
    c.use_expert_bias = true;
    SCOPED_TRACE(c.ToString());
    NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t d = c.hidden, t = 2;
    std::fill(w.gate.begin(), w.gate.end(), 0.0);
    w.gate[0 * d + 0] = w.gate[1 * d + 0] = 1.0;
    w.gate[2 * d + 0] = w.gate[3 * d + 0] = -1.0;
    const std::vector<double> bias = {0.5, 0.5 + std::ldexp(1.0, -12), 0.0, 0.0};
    std::vector<double> x = RoundTo(RandomUniform(t * d, rng_), dtype);
    for (int64_t r = 0; r < t; ++r) x[r * d + 0] = 1.0;
    HostTensors host;
    MoeWeights weights = ToMoeWeights(c, w, &host);
    weights.expert_bias = host.Add(bias, DType::kF32, Shape({4}));
    std::vector<int32_t> ids;
    RunWeights(c, weights, x, t, &ids);
    EXPECT_EQ(ids, std::vector<int32_t>(t, dtype == DType::kBF16 ? 0 : 1));
    w.bias = bias;
    EXPECT_EQ(NaiveRoute(c, w, x, t).ids, ids);
  }
}

// Run-dtype weights, exactly: with E = 2 and K = 2 every token uses both experts; each expert's
// output y_e (bf16) comes from a one-expert block (K = 1, weight 1, so its output is y_e). Then
//   route_weights kRunDType: out = bf16(fp32(bf16(y0 * w0)) + fp32(bf16(y1 * w1))), w bf16 values
//   route_weights kFp32:     out = bf16(fma(y1, w1, fp32(y0 * w0)))   (the combine's fma)
TEST_F(MoeRouterPrecisionTest, RunDTypeWeightsRoundEachWeightedOutput) {
  const int64_t t = 16;
  MoeConfig c = SmallConfig(2, 2, 33, 24, DType::kBF16);
  c.router_gemm = RouterGemm::kRunDType;
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  const std::vector<double> x = RoundTo(RandomUniform(t * c.hidden, rng_), c.dtype);
  std::vector<std::vector<double>> y(2);
  for (int e = 0; e < 2; ++e) {
    MoeConfig one = SmallConfig(1, 1, c.hidden, c.inter, c.dtype);
    one.renormalize = true;
    NaiveMoeWeights we;
    we.gate.assign(w.gate.begin() + e * c.hidden, w.gate.begin() + (e + 1) * c.hidden);
    we.w1 = {w.w1[e]};
    we.w3 = {w.w3[e]};
    we.w2 = {w.w2[e]};
    std::unique_ptr<MoeBlock> block = Block(one, we);
    ASSERT_NE(block, nullptr);
    y[e] = Run(block.get(), x, t).values;
  }
  int64_t differ = 0;
  std::vector<double> outputs[2];
  for (RouteWeights rw : kWeights) {
    c.route_weights = rw;
    SCOPED_TRACE(c.ToString());
    std::unique_ptr<MoeBlock> block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const BlockOutput got = Run(block.get(), x, t);
    ASSERT_EQ(block->last_trace().expert_path, ExpertPath::kBatched);
    std::vector<int32_t> ids;
    std::vector<float> weights;
    ASSERT_TRUE(block->CopyLastRouting(&ids, &weights).ok());
    std::vector<double> want(t * c.hidden);
    for (int64_t r = 0; r < t; ++r) {
      ASSERT_EQ(ids[2 * r], 0);
      ASSERT_EQ(ids[2 * r + 1], 1);
      const float w0 = weights[2 * r], w1 = weights[2 * r + 1];
      if (rw == RouteWeights::kRunDType) {
        EXPECT_EQ(w0, Bf16(w0)) << "token " << r;
        EXPECT_EQ(w1, Bf16(w1)) << "token " << r;
      }
      for (int64_t i = 0; i < c.hidden; ++i) {
        const float y0 = static_cast<float>(y[0][r * c.hidden + i]);
        const float y1 = static_cast<float>(y[1][r * c.hidden + i]);
        want[r * c.hidden + i] = rw == RouteWeights::kRunDType ? Bf16(Bf16(y0 * w0) + Bf16(y1 * w1))
                                                               : Bf16(std::fma(y1, w1, y0 * w0));
      }
    }
    EXPECT_EQ(got.values, want);
    outputs[rw == RouteWeights::kRunDType] = got.values;
  }
  for (int64_t i = 0; i < t * c.hidden; ++i) differ += outputs[0][i] != outputs[1][i];
  EXPECT_GT(differ, 0) << "the two weight precisions never differ on this input";
}

// The run-dtype shared gate, exactly: with zero routed experts (w2 = 0, so the routed sum is
// exactly 0) the block's output is the gated shared expert. A block without the gate gives the
// shared output s (bf16). Then out = bf16(bf16(sigmoid(bf16(x . g))) * s) for kRunDType, with
// the logit from float64 (tokens whose logit or sigmoid lies near a bf16 rounding boundary are
// skipped, where float64 and the engine's fp32 could round apart).
TEST_F(MoeRouterPrecisionTest, RunDTypeSharedGateRoundsLogitSigmoidAndProduct) {
  const int64_t t = 32;
  MoeConfig c = FullConfig(DType::kBF16);
  c.router_gemm = RouterGemm::kRunDType;
  NaiveMoeWeights w = RandomWeights(c, rng_);
  for (auto& m : w.w2) std::fill(m.begin(), m.end(), 0.0);
  const std::vector<double> x = RoundTo(RandomUniform(t * c.hidden, rng_), c.dtype);
  MoeConfig ungated = c;
  ungated.shared_gate = false;
  NaiveMoeWeights wu = w;
  wu.shared_gate.clear();
  std::unique_ptr<MoeBlock> plain = Block(ungated, wu);
  std::unique_ptr<MoeBlock> gated = Block(c, w);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(gated, nullptr);
  const std::vector<double> s = Run(plain.get(), x, t).values;
  const std::vector<double> got = Run(gated.get(), x, t).values;
  int64_t checked = 0;
  for (int64_t r = 0; r < t; ++r) {
    double logit = 0.0;
    for (int64_t i = 0; i < c.hidden; ++i) logit += x[r * c.hidden + i] * w.shared_gate[i];
    const double logit_b = Bf16(logit);
    const double sig = 1.0 / (1.0 + std::exp(-logit_b));
    const double ulp_l = std::ldexp(1.0, std::ilogb(logit) - 7);
    const double ulp_s = std::ldexp(1.0, std::ilogb(sig) - 7);
    const auto near_boundary = [](double v, double ulp) {
      const double frac = std::fabs(v / ulp - std::floor(v / ulp) - 0.5);
      return frac < 1e-3;
    };
    if (near_boundary(logit, ulp_l) || near_boundary(sig, ulp_s)) continue;
    ++checked;
    const float gate = Bf16(sig);
    for (int64_t i = 0; i < c.hidden; ++i) {
      EXPECT_EQ(got[r * c.hidden + i], Bf16(gate * static_cast<float>(s[r * c.hidden + i])))
          << "token " << r << " col " << i;
    }
  }
  EXPECT_GT(checked, t / 2);
}

// Same inputs, same bits: twice on one block, on a second block, and on a one-thread backend,
// with every run-dtype rounding point active.
TEST_F(MoeRouterPrecisionTest, RunDTypeModesAreDeterministic) {
  MoeConfig c = FullConfig(DType::kBF16);
  c.score = ScoreFunction::kSigmoid;
  c.use_expert_bias = true;
  c.num_groups = 4;
  c.topk_groups = 2;
  c.route_scale = 2.5f;
  c.router_gemm = RouterGemm::kRunDType;
  c.route_weights = RouteWeights::kRunDType;
  const NaiveMoeWeights w = RandomWeights(c, rng_);
  const int64_t t = 37;
  const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
  std::unique_ptr<MoeBlock> a = Block(c, w);
  std::unique_ptr<MoeBlock> b = Block(c, w);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const BlockOutput first = Run(a.get(), x, t);
  ASSERT_FALSE(first.bytes.empty());
  EXPECT_EQ(Run(a.get(), x, t).bytes, first.bytes);
  EXPECT_EQ(Run(b.get(), x, t).bytes, first.bytes);
  auto one_thread = MakeCpuDevice(1);
  ASSERT_TRUE(one_thread.ok()) << one_thread.status();
  auto c1 = MakeBlock(c, w, *one_thread);
  ASSERT_TRUE(c1.ok()) << c1.status();
  auto got = RunBlock(c1->get(), *one_thread, x, t);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->bytes, first.bytes);
  EXPECT_LE(MaxRelError(first.values, NaiveMoe(c, w, x, t)), kBlockTolBf16);
}

// The shipped families' configs select transformers' precisions (engine/model/model_config.cc
// cites the lines): Mixtral and Qwen2/3-MoE run their gate as a model-dtype nn.Linear, Qwen
// also casts the top-k weights to the model dtype; DeepSeek-V3 routes in fp32.
TEST(FamilyRouterPrecisionTest, FollowsTransformers) {
  const struct {
    const char* dir;
    RouterGemm gemm;
    RouteWeights weights;
  } kFamilies[] = {
      {"models/mixtral-tiny", RouterGemm::kRunDType, RouteWeights::kFp32},
      {"models/qwen3-moe-tiny", RouterGemm::kRunDType, RouteWeights::kRunDType},
      {"models/qwen2-moe-tiny", RouterGemm::kRunDType, RouteWeights::kRunDType},
      {"models/deepseek-v3-tiny", RouterGemm::kFp32, RouteWeights::kFp32},
  };
  for (const auto& f : kFamilies) {
    auto config = LoadModelConfig(f.dir);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->moe.router_gemm, f.gemm) << f.dir;
    EXPECT_EQ(config->moe.route_weights, f.weights) << f.dir;
  }
  EXPECT_EQ(MoeConfig().router_gemm, RouterGemm::kFp32);  // torchtitan's default
  EXPECT_EQ(MoeConfig().route_weights, RouteWeights::kFp32);
}

}  // namespace
}  // namespace moe::testing
