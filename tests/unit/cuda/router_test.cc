// The CUDA router against the CPU backend, bit for bit (ids and weights): random logits with
// and without exact ties (in the scores and, through a tied bias, in the choice values),
// softmax and sigmoid, with and without bias, group limits, renormalisation, route_scale,
// force_balanced (top_k past num_experts too), odd token counts and counts past one pass of
// the grid, sizes past the shared-memory path, and rows of special values (NaN, +-inf, +-0).
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/router.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <memory>
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

struct Config {
  int64_t tokens = 1;
  int64_t experts = 8;
  int64_t top_k = 2;
  ScoreFunction score = ScoreFunction::kSoftmax;
  int64_t groups = 1;
  int64_t topk_groups = 1;
  bool renormalize = false;
  float route_scale = 1.0f;
  bool force_balanced = false;
};

std::string Describe(const Config& c) {
  return std::to_string(c.tokens) + " tokens E=" + std::to_string(c.experts) +
         " K=" + std::to_string(c.top_k) +
         (c.score == ScoreFunction::kSoftmax ? " softmax" : " sigmoid") +
         " G=" + std::to_string(c.groups) + "/" + std::to_string(c.topk_groups) +
         (c.renormalize ? " renorm" : "") + " scale=" + std::to_string(c.route_scale) +
         (c.force_balanced ? " forced" : "");
}

// n values uniform in [lo, hi); with ties, drawn from a few quarter steps, so that equal
// logits (hence equal scores) are common.
std::vector<float> Values(int64_t n, std::mt19937_64& rng, float lo, float hi, bool ties) {
  std::vector<float> v(n);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::uniform_int_distribution<int> step(0, 7);
  for (float& f : v) f = ties ? lo + 0.25f * static_cast<float>(step(rng)) : dist(rng);
  return v;
}

class CudaRouterTest : public ::moe::cuda::testing::CudaOpTest {
 protected:

  // logits [tokens, experts]; bias [experts] or empty.
  void Check(const Config& c, const std::vector<float>& logits, const std::vector<float>& bias,
             bool any_nan = false) {
    SCOPED_TRACE(Describe(c) + (bias.empty() ? "" : " bias"));
    ASSERT_EQ(static_cast<int64_t>(logits.size()), c.tokens * c.experts);
    const int64_t slots = c.tokens * c.top_k;
    std::vector<int32_t> want_ids(slots, -7);
    std::vector<float> want_weights(slots, -7.0f);
    RouterArgs args;
    args.tokens = c.tokens;
    args.num_experts = c.experts;
    args.top_k = c.top_k;
    args.logits = logits.data();
    args.score = c.score;
    args.expert_bias = bias.empty() ? nullptr : bias.data();
    args.num_groups = c.groups;
    args.topk_groups = c.topk_groups;
    args.renormalize = c.renormalize;
    args.route_scale = c.route_scale;
    args.force_balanced = c.force_balanced;
    args.ids = want_ids.data();
    args.weights = want_weights.data();
    const absl::Status cpu = cpu_->Router(args);
    ASSERT_TRUE(cpu.ok()) << cpu;

    const Bytes init(slots * 4, 0x7b);
    DeviceBuffer dlogits(AsBytes(logits)), dbias(AsBytes(bias.empty() ? logits : bias)), dids(init),
        dweights(init);
    args.logits = dlogits.as<float>();
    args.expert_bias = bias.empty() ? nullptr : dbias.as<float>();
    args.ids = dids.as<int32_t>();
    args.weights = dweights.as<float>();
    const absl::Status launch = LaunchRouter(args, stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    ExpectSameBits(dids.ToHost(), AsBytes(want_ids), DType::kF32);
    ExpectSameBits(dweights.ToHost(), AsBytes(want_weights), DType::kF32, any_nan);
  }

  // Random logits (and bias when asked), once with continuous values and once with ties.
  void CheckRandom(const Config& c, bool with_bias, std::mt19937_64& rng) {
    for (bool ties : {false, true}) {
      SCOPED_TRACE(ties ? "tied values" : "distinct values");
      const std::vector<float> logits = Values(c.tokens * c.experts, rng, -4.0f, 4.0f, ties);
      std::vector<float> bias;
      if (with_bias) bias = Values(c.experts, rng, -0.5f, 0.5f, ties);
      Check(c, logits, bias);
    }
  }

};

TEST_F(CudaRouterTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (int64_t experts : {8, 16, 64, 128, 256}) {
    for (int64_t top_k : {1, 2, 4, 8}) {
      for (int64_t groups : {1, 4, 8}) {
        const int64_t group_size = experts / groups;
        if (group_size < 2) continue;
        for (int64_t topk_groups : {int64_t{1}, groups / 2, groups}) {
          if (topk_groups < 1 || (groups == 1 && topk_groups != 1)) continue;
          if (topk_groups * group_size < top_k) continue;
          for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
            for (bool renormalize : {false, true}) {
              Config c;
              c.tokens = 37;
              c.experts = experts;
              c.top_k = top_k;
              c.score = score;
              c.groups = groups;
              c.topk_groups = topk_groups;
              c.renormalize = renormalize;
              c.route_scale = renormalize ? 2.5f : 1.0f;
              for (bool with_bias : {false, true}) CheckRandom(c, with_bias, rng);
            }
          }
        }
      }
    }
  }
}

// Fewer than 8 experts (softmax partial sums left at zero), odd expert counts, top_k ==
// num_experts, and odd groups.
TEST_F(CudaRouterTest, SmallAndOddShapesMatchCpu) {
  std::mt19937_64 rng(5);
  struct Shape {
    int64_t experts, top_k, groups, topk_groups;
  };
  for (Shape s : {Shape{1, 1, 1, 1}, Shape{3, 2, 1, 1}, Shape{5, 5, 1, 1}, Shape{7, 3, 1, 1},
                  Shape{6, 4, 3, 2}, Shape{33, 33, 1, 1}, Shape{100, 6, 5, 3}, Shape{96, 7, 48, 4},
                  Shape{160, 8, 10, 10}, Shape{512, 16, 16, 1}}) {
    for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
      for (int64_t tokens : {1, 2, 31, 33}) {
        Config c;
        c.tokens = tokens;
        c.experts = s.experts;
        c.top_k = s.top_k;
        c.score = score;
        c.groups = s.groups;
        c.topk_groups = s.topk_groups;
        c.renormalize = tokens % 2 == 1;
        c.route_scale = 0.75f;
        for (bool with_bias : {false, true}) CheckRandom(c, with_bias, rng);
      }
    }
  }
}

// num_experts + num_groups at and past the shared-memory slice (3072 per warp): past it, scores
// are recomputed.
TEST_F(CudaRouterTest, ManyExpertsMatchCpu) {
  std::mt19937_64 rng(11);
  struct Shape {
    int64_t experts, top_k, groups, topk_groups;
  };
  for (Shape s : {Shape{3071, 8, 1, 1}, Shape{3072, 8, 1, 1}, Shape{4096, 8, 1, 1},
                  Shape{4096, 8, 8, 3}, Shape{4096, 4, 2048, 5}, Shape{5000, 40, 1, 1}}) {
    for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
      Config c;
      c.tokens = 5;
      c.experts = s.experts;
      c.top_k = s.top_k;
      c.score = score;
      c.groups = s.groups;
      c.topk_groups = s.topk_groups;
      c.renormalize = true;
      for (bool with_bias : {false, true}) CheckRandom(c, with_bias, rng);
    }
  }
}

// More tokens than one pass of the grid covers.
TEST_F(CudaRouterTest, ManyTokensMatchCpu) {
  std::mt19937_64 rng(13);
  Config c;
  c.tokens = 70001;
  c.experts = 64;
  c.top_k = 6;
  c.groups = 8;
  c.topk_groups = 3;
  c.renormalize = true;
  c.route_scale = 2.5f;
  CheckRandom(c, /*with_bias=*/true, rng);
}

// ids[t, k] = (t * top_k + k) mod num_experts; weights are the scores there, in slot order.
TEST_F(CudaRouterTest, ForceBalancedMatchesCpu) {
  std::mt19937_64 rng(17);
  struct Shape {
    int64_t experts, top_k, groups, topk_groups;
  };
  for (Shape s : {Shape{8, 2, 1, 1}, Shape{4, 10, 1, 1}, Shape{3, 70, 1, 1}, Shape{64, 8, 8, 1},
                  Shape{256, 8, 8, 4}}) {
    for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
      for (bool renormalize : {false, true}) {
        Config c;
        c.tokens = 39;
        c.experts = s.experts;
        c.top_k = s.top_k;
        c.score = score;
        c.groups = s.groups;
        c.topk_groups = s.topk_groups;
        c.renormalize = renormalize;
        c.route_scale = 1.5f;
        c.force_balanced = true;
        for (bool with_bias : {false, true}) CheckRandom(c, with_bias, rng);
      }
    }
  }
}

// Every logit equal: the lowest ids win, in every group.
TEST_F(CudaRouterTest, AllTiedRowsPickTheLowestIds) {
  for (int64_t groups : {1, 4}) {
    Config c;
    c.tokens = 3;
    c.experts = 16;
    c.top_k = 4;
    c.groups = groups;
    c.topk_groups = groups == 1 ? 1 : 2;
    c.renormalize = true;
    Check(c, std::vector<float>(c.tokens * c.experts, 0.5f), {});
    Check(c, std::vector<float>(c.tokens * c.experts, -0.0f), {});
  }
}

// Rows of NaN, +-inf, +-0 and the ends of the exp range: ids exactly as the CPU's, weights
// bitwise except that a NaN matches any NaN.
TEST_F(CudaRouterTest, SpecialValuesMatchCpu) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t experts = 8;
  const std::vector<std::vector<float>> rows = {
      {nan, nan, nan, nan, nan, nan, nan, nan},
      {1.0f, nan, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 2.0f},
      {inf, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f},
      {-inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf},
      {-inf, 1.0f, -inf, 2.0f, -inf, 2.0f, -inf, 0.0f},
      {0.0f, -0.0f, 0.0f, -0.0f, -0.0f, 0.0f, -0.0f, 0.0f},
      {88.72f, 88.73f, -86.49f, -86.51f, -103.0f, 20.0f, -20.0f, 1e-45f},
      {-1e30f, -1e30f, 1e30f, 1e30f, -3.4e38f, 3.4e38f, 0.0f, 1.0f},
  };
  std::vector<float> logits;
  for (const std::vector<float>& r : rows) logits.insert(logits.end(), r.begin(), r.end());
  for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    for (int64_t groups : {1, 4}) {
      for (bool forced : {false, true}) {
        Config c;
        c.tokens = static_cast<int64_t>(rows.size());
        c.experts = experts;
        c.top_k = 3;
        c.score = score;
        c.groups = groups;
        c.topk_groups = groups == 1 ? 1 : 2;
        c.renormalize = true;
        c.force_balanced = forced;
        Check(c, logits, {}, /*any_nan=*/true);
        Check(c, logits, {0.0f, -0.0f, 1.0f, nan, -inf, 0.5f, 0.5f, 0.0f}, /*any_nan=*/true);
      }
    }
  }
}

TEST_F(CudaRouterTest, NoTokensEnqueuesNothing) {
  RouterArgs args;
  args.tokens = 0;
  args.num_experts = 8;
  args.top_k = 2;
  EXPECT_TRUE(LaunchRouter(args, stream_).ok());
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

}  // namespace
}  // namespace moe::cuda
