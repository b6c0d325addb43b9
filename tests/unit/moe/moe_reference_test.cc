// The whole block against the float64 naive MoE (naive_moe.h), for every routing variant,
// with and without shared experts, f32 and bf16, odd and round sizes.
//
// Routing: inputs are drawn with a clear margin (RandomRoutableInput re-draws any token whose
// float64 top-k or group decision is closer than kRoutingMargin, or, in the run-dtype router
// modes, whose logits or weights lie that close to a bf16 rounding boundary), so the engine's
// fp32 logits must pick exactly the reference's experts; the test asserts that before comparing
// values.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

struct Variant {
  std::string name;
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool bias = false;
  int64_t group_size = 0;  // experts per group; 0 = no group limit
  bool renormalize = false;
  float route_scale = 1.0f;
  bool score_before = false;
  int64_t shared = 0;  // num_shared_experts
  bool shared_gate = false;
  bool force_balanced = false;
  int64_t top_k = 0;  // 0: the size's K
  RouterGemm router_gemm = RouterGemm::kFp32;
  RouteWeights route_weights = RouteWeights::kFp32;
};

struct Size {
  int64_t tokens, hidden, inter, experts, top_k;
};

const Variant kVariants[] = {
    {"softmax"},
    {"softmax_renorm_qwen3", ScoreFunction::kSoftmax, false, 0, true},
    {"softmax_groups_scale_dsv2", ScoreFunction::kSoftmax, false, 2, false, 16.0f, false, 2},
    {"sigmoid_bias_groups_renorm_dsv3", ScoreFunction::kSigmoid, true, 2, true, 2.5f, false, 1},
    {"sigmoid_bias", ScoreFunction::kSigmoid, true},
    {"sigmoid_before_shared_llama4", ScoreFunction::kSigmoid, false, 0, false, 1.0f, true, 1, false,
     false, 1},
    {"softmax_before_renorm", ScoreFunction::kSoftmax, false, 0, true, 1.0f, true},
    {"softmax_renorm_shared_gate_qwen2", ScoreFunction::kSoftmax, false, 0, true, 1.0f, false, 1,
     true},
    {"softmax_shared2_dsv3_debug", ScoreFunction::kSoftmax, false, 0, false, 1.0f, false, 2},
    {"force_balanced_shared", ScoreFunction::kSoftmax, false, 0, false, 1.0f, false, 1, false,
     true},
    {"force_balanced_before_renorm", ScoreFunction::kSigmoid, false, 0, true, 1.0f, true, 0, false,
     true},
    // Hugging Face's bf16 router precisions (MoeConfig::router_gemm / route_weights).
    {"softmax_renorm_rungemm_mixtral", ScoreFunction::kSoftmax, false, 0, true, 1.0f, false, 0,
     false, false, 0, RouterGemm::kRunDType},
    {"softmax_renorm_rungemm_runweights_qwen3", ScoreFunction::kSoftmax, false, 0, true, 1.0f,
     false, 0, false, false, 0, RouterGemm::kRunDType, RouteWeights::kRunDType},
    {"softmax_shared_gate_rungemm_runweights_qwen2", ScoreFunction::kSoftmax, false, 0, false, 1.0f,
     false, 1, true, false, 0, RouterGemm::kRunDType, RouteWeights::kRunDType},
    {"sigmoid_bias_groups_renorm_rungemm_runweights", ScoreFunction::kSigmoid, true, 2, true, 2.5f,
     false, 1, false, false, 0, RouterGemm::kRunDType, RouteWeights::kRunDType},
    {"softmax_before_runweights", ScoreFunction::kSoftmax, false, 0, true, 1.0f, true, 0, false,
     false, 0, RouterGemm::kFp32, RouteWeights::kRunDType},
    {"force_balanced_runweights", ScoreFunction::kSoftmax, false, 0, false, 1.0f, false, 0, false,
     true, 0, RouterGemm::kRunDType, RouteWeights::kRunDType},
};

const Size kSizes[] = {
    {1, 16, 8, 4, 1},  {7, 33, 24, 8, 2}, {64, 16, 24, 16, 4},
    {64, 33, 8, 4, 2}, {7, 16, 8, 16, 3}, {1, 33, 24, 8, 8},
};

struct Case {
  Variant variant;
  Size size;
  DType dtype;
};

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const Variant& v : kVariants) {
    for (const Size& s : kSizes) {
      for (DType t : {DType::kF32, DType::kBF16}) cases.push_back({v, s, t});
    }
  }
  return cases;
}

MoeConfig ConfigFor(const Case& c) {
  MoeConfig config;
  config.num_experts = c.size.experts;
  config.top_k = c.variant.top_k > 0 ? c.variant.top_k : c.size.top_k;
  config.hidden = c.size.hidden;
  config.inter = c.size.inter;
  config.score = c.variant.score;
  config.use_expert_bias = c.variant.bias;
  if (c.variant.group_size > 0) {
    config.num_groups = config.num_experts / c.variant.group_size;
    const int64_t needed = (config.top_k + c.variant.group_size - 1) / c.variant.group_size;
    config.topk_groups = std::max(needed, config.num_groups / 2);
  }
  config.renormalize = c.variant.renormalize;
  config.route_scale = c.variant.route_scale;
  config.score_before_experts = c.variant.score_before;
  config.num_shared_experts = c.variant.shared;
  config.shared_inter = c.variant.shared > 0 ? c.size.inter : 0;
  config.shared_gate = c.variant.shared_gate;
  config.force_balanced = c.variant.force_balanced;
  config.router_gemm = c.variant.router_gemm;
  config.route_weights = c.variant.route_weights;
  config.dtype = c.dtype;
  return config;
}

class MoeReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoeReferenceTest, MatchesFloat64Reference) {
  const Case& c = GetParam();
  const MoeConfig config = ConfigFor(c);
  ASSERT_TRUE(config.Validate().ok()) << config.ToString();
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed, " ", config.ToString()));
  std::mt19937_64 rng(seed);
  const NaiveMoeWeights w = RandomWeights(config, rng);
  const int64_t t = c.size.tokens;
  const std::vector<double> x = RandomRoutableInput(config, w, t, rng);

  auto dev = MakeTestDevice();
  if (!dev.ok()) GTEST_SKIP() << "no test backend: " << dev.status();
  auto block = MakeBlock(config, w, *dev);
  ASSERT_TRUE(block.ok()) << block.status();
  auto got = RunBlock(block->get(), *dev, x, t);
  ASSERT_TRUE(got.ok()) << got.status();

  const NaiveRouting want_routing = NaiveRoute(config, w, x, t);
  std::vector<int32_t> ids;
  std::vector<float> weights;
  ASSERT_TRUE((*block)->CopyLastRouting(&ids, &weights).ok());
  ASSERT_EQ(ids, want_routing.ids);
  for (size_t i = 0; i < weights.size(); ++i) {
    EXPECT_NEAR(weights[i], want_routing.weights[i], 1e-5 * (1.0 + want_routing.weights[i]))
        << "slot " << i;
  }
  const std::vector<double> want = NaiveMoe(config, w, x, t);
  EXPECT_LE(MaxRelError(got->values, want), BlockTol(c.dtype));

  const MoeTrace& trace = (*block)->last_trace();
  EXPECT_EQ(trace.tokens, t);
  EXPECT_EQ(trace.combine_path, CombinePath::kInPlace);
  EXPECT_NE(trace.expert_path, ExpertPath::kNone);
  int64_t total = 0;
  for (int64_t n : trace.counts) total += n;
  EXPECT_EQ(total, t * config.top_k);
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeReferenceTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return absl::StrCat(c.variant.name, "_T", c.size.tokens, "_D",
                                               c.size.hidden, "_I", c.size.inter, "_E",
                                               c.size.experts, "_K", c.size.top_k, "_",
                                               DTypeName(c.dtype));
                         });

}  // namespace
}  // namespace moe::testing
