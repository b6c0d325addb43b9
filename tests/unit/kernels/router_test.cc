// Router op against a float64 reference: scores, bias for selection only, group-limited
// selection (top-2 group sums), top-k ties to the lower id, weights, force-balanced routing,
// NaN inputs, and bit identity across threads, runs and batch compositions.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe {
namespace {

using ::moe::testing::kOpTolF32;
using ::moe::testing::MaxRelError;
using ::moe::testing::TestSeed;

struct Config {
  int64_t tokens = 1;
  int64_t experts = 8;
  int64_t top_k = 2;
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool bias = false;
  int64_t groups = 1;
  int64_t topk_groups = 1;
  bool renormalize = false;
  float route_scale = 1.0f;
  bool force_balanced = false;
};

std::string Describe(const Config& c) {
  return absl::StrCat("T=", c.tokens, " E=", c.experts, " K=", c.top_k,
                      c.score == ScoreFunction::kSoftmax ? " softmax" : " sigmoid",
                      c.bias ? " bias" : "", " G=", c.groups, "/", c.topk_groups,
                      c.renormalize ? " renorm" : "", " scale=", c.route_scale,
                      c.force_balanced ? " forced" : "");
}

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed RunRouter(Backend& backend, const Config& c, const std::vector<float>& logits,
                 const std::vector<float>& bias) {
  Routed r;
  r.ids.assign(c.tokens * c.top_k, -7);
  r.weights.assign(c.tokens * c.top_k, -7.0f);
  RouterArgs a;
  a.tokens = c.tokens;
  a.num_experts = c.experts;
  a.top_k = c.top_k;
  a.logits = logits.data();
  a.score = c.score;
  a.expert_bias = c.bias ? bias.data() : nullptr;
  a.num_groups = c.groups;
  a.topk_groups = c.topk_groups;
  a.renormalize = c.renormalize;
  a.route_scale = c.route_scale;
  a.force_balanced = c.force_balanced;
  a.ids = r.ids.data();
  a.weights = r.weights.data();
  const absl::Status status = backend.Router(a);
  EXPECT_TRUE(status.ok()) << status;
  return r;
}

// The reference for one token. Scores in float64; selection on the fp32 values a correct fp32
// implementation sees (correctly rounded scores, fp32 bias add and group sums).
struct TokenRef {
  std::vector<double> scores;  // float64
  std::vector<float> choice;   // fp32
  std::vector<float> group;    // fp32 top-2 sums
  std::vector<bool> kept;      // per group
  std::vector<int32_t> ids;    // ascending
  // Gaps at the selection boundaries (k-th vs next choice, topk_groups-th vs next group score),
  // relative to the larger of the values compared and the row's largest score: the kernel's
  // fp32 scores may differ from these by a few ulps (its exp and summation order), which can
  // only flip a selection across a tiny gap.
  double expert_margin = 1e30;
  double group_margin = 1e30;
};

// Larger first, ties to the lower index (no NaN in the reference inputs).
std::vector<int64_t> RankOrder(const std::vector<float>& v) {
  std::vector<int64_t> order(v.size());
  for (size_t i = 0; i < v.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return order;
}

TokenRef Reference(const Config& c, const float* logits, const std::vector<float>& bias) {
  TokenRef r;
  const int64_t e_count = c.experts;
  r.scores.resize(e_count);
  if (c.score == ScoreFunction::kSoftmax) {
    double max = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < e_count; ++i) max = std::max(max, double{logits[i]});
    for (int64_t i = 0; i < e_count; ++i) sum += std::exp(logits[i] - max);
    for (int64_t i = 0; i < e_count; ++i) r.scores[i] = std::exp(logits[i] - max) / sum;
  } else {
    for (int64_t i = 0; i < e_count; ++i) r.scores[i] = 1.0 / (1.0 + std::exp(-double{logits[i]}));
  }
  const double max_score = *std::max_element(r.scores.begin(), r.scores.end());
  r.choice.resize(e_count);
  for (int64_t i = 0; i < e_count; ++i) {
    r.choice[i] = static_cast<float>(r.scores[i]);
    if (c.bias) r.choice[i] = r.choice[i] + bias[i];
  }
  const int64_t size = e_count / c.groups;
  r.kept.assign(c.groups, true);
  if (c.groups > 1) {
    r.group.resize(c.groups);
    for (int64_t g = 0; g < c.groups; ++g) {
      std::vector<float> part(r.choice.begin() + g * size, r.choice.begin() + (g + 1) * size);
      std::vector<int64_t> o = RankOrder(part);
      r.group[g] = part[o[0]] + part[o[1]];
    }
    std::vector<int64_t> go = RankOrder(r.group);
    r.kept.assign(c.groups, false);
    for (int64_t n = 0; n < c.topk_groups; ++n) r.kept[go[n]] = true;
    if (c.topk_groups < c.groups) {
      const double a = r.group[go[c.topk_groups - 1]], b = r.group[go[c.topk_groups]];
      r.group_margin = (a - b) / std::max({std::fabs(a), std::fabs(b), 2 * max_score});
    }
  }
  std::vector<float> masked(e_count, -INFINITY);
  for (int64_t i = 0; i < e_count; ++i) {
    if (r.kept[i / size]) masked[i] = r.choice[i];
  }
  std::vector<int64_t> order = RankOrder(masked);
  for (int64_t k = 0; k < c.top_k; ++k) r.ids.push_back(static_cast<int32_t>(order[k]));
  if (c.top_k < e_count && masked[order[c.top_k]] != -INFINITY) {
    const double a = masked[order[c.top_k - 1]], b = masked[order[c.top_k]];
    r.expert_margin = (a - b) / std::max({std::fabs(a), std::fabs(b), max_score});
  }
  std::sort(r.ids.begin(), r.ids.end());
  return r;
}

// Reference weights (float64) at the given ids, in slot order.
std::vector<double> RefWeights(const Config& c, const std::vector<double>& scores,
                               const int32_t* ids) {
  std::vector<double> w(c.top_k);
  double sum = 0.0;
  for (int64_t k = 0; k < c.top_k; ++k) sum += (w[k] = scores[ids[k]]);
  for (int64_t k = 0; k < c.top_k; ++k) {
    if (c.renormalize) w[k] /= sum + 1e-20;
    w[k] *= c.route_scale;
  }
  return w;
}

// Random logits, optionally quantised to a few levels so that exact ties occur.
std::vector<float> MakeLogits(const Config& c, std::mt19937_64& rng, bool quantised) {
  std::vector<float> v(c.tokens * c.experts);
  if (quantised) {
    // The offset avoids pairs x, -x: sigmoid(x) + sigmoid(-x) = 1 would make different
    // groups tie in exact arithmetic but not in fp32.
    std::uniform_int_distribution<int> level(-4, 4);
    for (float& x : v) x = 0.5f * level(rng) + 0.125f;
  } else {
    std::uniform_real_distribution<float> u(-4.0f, 4.0f);
    for (float& x : v) x = u(rng);
  }
  return v;
}

std::vector<float> MakeBias(const Config& c, std::mt19937_64& rng, bool quantised) {
  std::vector<float> v(c.experts);
  if (quantised) {
    // Integer steps keep biased choices of different (score, bias) pairs far apart. With
    // groups the bias is constant per group: per-expert steps would let two groups' top-2 sums
    // (s1 + 1) + s2 and (s2 + 1) + s1 tie in exact arithmetic but differ by an fp32 ulp, and
    // the kernel's few-ulp score error could then order them either way.
    std::uniform_int_distribution<int> level(0, 1);
    const int64_t size = c.experts / c.groups;
    for (int64_t i = 0; i < c.experts; ++i) {
      v[i] = c.groups > 1 && i % size != 0 ? v[i - 1] : static_cast<float>(level(rng));
    }
  } else {
    std::uniform_real_distribution<float> u(-0.2f, 0.2f);
    for (float& x : v) x = u(rng);
  }
  return v;
}

class RouterTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

std::vector<Config> RandomConfigs() {
  std::vector<Config> out;
  for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    for (bool bias : {false, true}) {
      for (bool renorm : {false, true}) {
        Config c;
        c.score = score;
        c.bias = bias;
        c.renormalize = renorm;
        c.tokens = 257;
        c.experts = 8;
        c.top_k = 2;
        out.push_back(c);  // Mixtral-like
        c.tokens = 300;
        c.experts = 128;
        c.top_k = 8;
        c.route_scale = 2.5f;
        out.push_back(c);  // Qwen3-like
        c.tokens = 129;
        c.experts = 256;
        c.groups = 8;
        c.topk_groups = 4;
        c.route_scale = 2.5f;
        out.push_back(c);  // DeepSeek-V3-like
        c.tokens = 33;
        c.experts = 15;
        c.top_k = 7;
        c.groups = 5;
        c.topk_groups = 3;
        c.route_scale = 1.0f;
        out.push_back(c);  // odd sizes, 3 experts per group
        c.experts = 7;
        c.top_k = 7;
        c.groups = 1;
        c.topk_groups = 1;
        out.push_back(c);  // top_k == num_experts
        c.experts = 1;
        c.top_k = 1;
        out.push_back(c);
      }
    }
  }
  return out;
}

// Ties (quantised logits): ids equal the reference exactly; weights within fp32 tolerance.
TEST_F(RouterTest, QuantisedLogitsMatchReferenceIdsExactly) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (const Config& c : RandomConfigs()) {
    SCOPED_TRACE(Describe(c));
    const std::vector<float> logits = MakeLogits(c, rng, true);
    const std::vector<float> bias = MakeBias(c, rng, true);
    const Routed got = RunRouter(one_, c, logits, bias);
    std::vector<double> want_w, got_w;
    for (int64_t t = 0; t < c.tokens; ++t) {
      const TokenRef ref = Reference(c, logits.data() + t * c.experts, bias);
      const std::vector<int32_t> ids(got.ids.begin() + t * c.top_k,
                                     got.ids.begin() + (t + 1) * c.top_k);
      ASSERT_EQ(ids, ref.ids) << "token " << t;
      const std::vector<double> w = RefWeights(c, ref.scores, ref.ids.data());
      want_w.insert(want_w.end(), w.begin(), w.end());
    }
    for (float w : got.weights) got_w.push_back(w);
    EXPECT_LE(MaxRelError(got_w, want_w), kOpTolF32);
  }
}

// Continuous logits: ids equal the reference wherever no near-tie makes the fp32 rounding of
// the scores decide; ids never leave the chosen groups; weights within fp32 tolerance.
TEST_F(RouterTest, RandomLogitsMatchReference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (const Config& c : RandomConfigs()) {
    SCOPED_TRACE(Describe(c));
    const std::vector<float> logits = MakeLogits(c, rng, false);
    const std::vector<float> bias = MakeBias(c, rng, false);
    const Routed got = RunRouter(two_, c, logits, bias);
    std::vector<double> want_w, got_w;
    int64_t near_ties = 0;
    for (int64_t t = 0; t < c.tokens; ++t) {
      const TokenRef ref = Reference(c, logits.data() + t * c.experts, bias);
      const int32_t* ids = got.ids.data() + t * c.top_k;
      const int64_t size = c.experts / c.groups;
      std::set<int64_t> groups;
      for (int64_t k = 0; k < c.top_k; ++k) {
        ASSERT_TRUE(ids[k] >= 0 && ids[k] < c.experts) << ids[k];
        if (k > 0) {
          ASSERT_LT(ids[k - 1], ids[k]) << "token " << t;
        }
        groups.insert(ids[k] / size);
      }
      ASSERT_LE(static_cast<int64_t>(groups.size()), c.topk_groups) << "token " << t;
      if (ref.group_margin < 1e-5 || ref.expert_margin < 1e-5) {
        ++near_ties;
      } else {
        ASSERT_EQ(std::vector<int32_t>(ids, ids + c.top_k), ref.ids) << "token " << t;
      }
      const std::vector<double> w = RefWeights(c, ref.scores, ids);
      want_w.insert(want_w.end(), w.begin(), w.end());
    }
    EXPECT_LE(near_ties, c.tokens / 10 + 2);
    for (float w : got.weights) got_w.push_back(w);
    EXPECT_LE(MaxRelError(got_w, want_w), kOpTolF32);
  }
}

// Group-limited routing with quantised inputs (many tied group scores): every id lies in a
// group the reference keeps.
TEST_F(RouterTest, GroupLimitedNeverSelectsOutsideTheChosenGroups) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  Config c;
  c.tokens = 500;
  c.experts = 64;
  c.top_k = 6;
  c.groups = 8;
  c.topk_groups = 3;
  c.score = ScoreFunction::kSigmoid;
  c.bias = true;
  const std::vector<float> logits = MakeLogits(c, rng, true);
  const std::vector<float> bias = MakeBias(c, rng, true);
  const Routed got = RunRouter(two_, c, logits, bias);
  for (int64_t t = 0; t < c.tokens; ++t) {
    const TokenRef ref = Reference(c, logits.data() + t * c.experts, bias);
    for (int64_t k = 0; k < c.top_k; ++k) {
      EXPECT_TRUE(ref.kept[got.ids[t * c.top_k + k] / 8]) << "token " << t;
    }
  }
}

// MOE_SEMANTICS 7.2 (a): uniform softmax -> the lowest ids, weights 1/8, renormalised 1/3.
TEST_F(RouterTest, AllZeroLogitsPickLowestIds) {
  Config c;
  c.experts = 8;
  c.top_k = 3;
  const std::vector<float> logits(8, 0.0f);
  Routed r = RunRouter(one_, c, logits, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.125f, 0.125f, 0.125f}));
  c.renormalize = true;
  r = RunRouter(one_, c, logits, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 2}));
  const float third = 1.0f / 3.0f;
  EXPECT_EQ(r.weights, (std::vector<float>{third, third, third}));
}

// MOE_SEMANTICS 7.2 (b): DeepSeek-V3-style groups with all-equal scores -> groups {0,1,2,3},
// experts = the 8 lowest ids of those groups.
TEST_F(RouterTest, EqualScoresPickLowestGroupsAndIds) {
  for (ScoreFunction score : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    Config c;
    c.tokens = 3;
    c.experts = 64;
    c.top_k = 8;
    c.groups = 8;
    c.topk_groups = 4;
    c.score = score;
    const std::vector<float> logits(c.tokens * 64, 0.25f);
    const Routed r = RunRouter(two_, c, logits, {});
    for (int64_t t = 0; t < c.tokens; ++t) {
      EXPECT_EQ(std::vector<int32_t>(r.ids.begin() + 8 * t, r.ids.begin() + 8 * t + 8),
                (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
    }
    // With a group structure that forces the spread: K = 8 needs all four kept groups when
    // each group's lowest-id experts are tied but its others are lower.
    c.tokens = 1;
    c.top_k = 8;
    std::vector<float> spread(64, -2.0f);
    for (int64_t g = 0; g < 8; ++g) spread[g * 8] = spread[g * 8 + 1] = 1.0f;
    const Routed s = RunRouter(two_, c, spread, {});
    EXPECT_EQ(s.ids, (std::vector<int32_t>{0, 1, 8, 9, 16, 17, 24, 25}));
  }
}

// MOE_SEMANTICS 7.3: the bias selects, the weight is the unbiased score.
TEST_F(RouterTest, BiasIsSelectionOnly) {
  Config c;
  c.experts = 4;
  c.top_k = 1;
  c.score = ScoreFunction::kSigmoid;
  c.bias = true;
  const float l9 = std::log(9.0f);
  const std::vector<float> logits = {l9, -l9, -l9, -l9};  // scores 0.9, 0.1, 0.1, 0.1
  const std::vector<float> bias = {-1.0f, 0.0f, 0.0f, 1.0f};
  const Routed r = RunRouter(one_, c, logits, bias);
  EXPECT_EQ(r.ids, std::vector<int32_t>{3});
  EXPECT_NEAR(r.weights[0], 0.1f, 1e-6f);
}

// MOE_SEMANTICS 7.4: group score = top-2 sum including the bias, so [0.5, 0.5] beats
// [0.9, 0.0] (a per-group max would pick group 0).
TEST_F(RouterTest, GroupScoreIsTopTwoSum) {
  Config c;
  c.experts = 8;
  c.top_k = 2;
  c.groups = 4;
  c.topk_groups = 1;
  c.score = ScoreFunction::kSigmoid;
  c.bias = true;
  const std::vector<float> logits(8, 0.0f);  // sigmoid = 0.5 everywhere
  // choice = [0.9, 0.0 | 0.5, 0.5 | -0.4 ...].
  const std::vector<float> bias = {0.4f, -0.5f, 0.0f, 0.0f, -0.9f, -0.9f, -0.9f, -0.9f};
  const Routed r = RunRouter(one_, c, logits, bias);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.5f, 0.5f}));
}

// Force-balanced: ids[t, k] = (t K + k) mod E in slot order (repeats allowed when K > E),
// weights = scores there, normalised and scaled as usual.
TEST_F(RouterTest, ForceBalancedRoundRobin) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (auto [tokens, experts, k] :
       std::vector<std::tuple<int, int, int>>{{5, 4, 3}, {2, 2, 3}, {37, 16, 4}, {9, 3, 5}}) {
    for (bool renorm : {false, true}) {
      Config c;
      c.tokens = tokens;
      c.experts = experts;
      c.top_k = k;
      c.force_balanced = true;
      c.renormalize = renorm;
      c.route_scale = 1.5f;
      c.bias = true;
      SCOPED_TRACE(Describe(c));
      const std::vector<float> logits = MakeLogits(c, rng, false);
      const std::vector<float> bias = MakeBias(c, rng, false);
      const Routed r = RunRouter(two_, c, logits, bias);
      std::vector<double> want, got;
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t j = 0; j < k; ++j) {
          ASSERT_EQ(r.ids[t * k + j], (t * k + j) % experts);
        }
        const TokenRef ref = Reference(c, logits.data() + t * experts, bias);
        const std::vector<double> w = RefWeights(c, ref.scores, r.ids.data() + t * k);
        want.insert(want.end(), w.begin(), w.end());
      }
      for (float w : r.weights) got.push_back(w);
      EXPECT_LE(MaxRelError(got, want), kOpTolF32);
    }
  }
  // The exact pattern of MOE_SEMANTICS 7.10.
  Config c;
  c.tokens = 2;
  c.experts = 2;
  c.top_k = 3;
  c.force_balanced = true;
  const Routed r = RunRouter(one_, c, std::vector<float>(4, 0.0f), {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 0, 1, 0, 1}));
}

// NaN never crashes and never yields invalid or repeated ids: a NaN choice ranks last.
TEST_F(RouterTest, NanLogitsRankLast) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Config c;
  c.experts = 6;
  c.top_k = 2;
  c.score = ScoreFunction::kSigmoid;
  // Sigmoid: only the NaN experts' scores are NaN; they are never preferred.
  Routed r = RunRouter(one_, c, {nan, 1.0f, nan, -3.0f, 2.0f, nan}, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 4}));
  EXPECT_FALSE(std::isnan(r.weights[0]) || std::isnan(r.weights[1]));
  // Forced to take NaN experts: the lowest NaN ids.
  c.top_k = 4;
  r = RunRouter(one_, c, {nan, 1.0f, nan, -3.0f, 2.0f, nan}, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 3, 4}));
  // Softmax: one NaN poisons the row's sum; ids are the lowest, weights NaN.
  c.score = ScoreFunction::kSoftmax;
  c.top_k = 2;
  c.groups = 3;
  c.topk_groups = 2;
  r = RunRouter(one_, c, {1.0f, 2.0f, nan, 0.0f, 5.0f, 4.0f}, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(std::isnan(r.weights[0]) && std::isnan(r.weights[1]));
  // Infinite logits: softmax of +inf is NaN (as in PyTorch); -inf is a plain lowest value.
  c.groups = 1;
  c.topk_groups = 1;
  const float inf = std::numeric_limits<float>::infinity();
  r = RunRouter(one_, c, {-inf, 1.0f, -inf, 0.0f, -inf, -inf}, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  r = RunRouter(one_, c, {-inf, inf, 0.0f, 0.0f, 0.0f, 0.0f}, {});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
}

// MOE_SEMANTICS 7.2 (c): same bits with 1 or 2 threads, run to run, and whatever other tokens
// share the batch.
TEST_F(RouterTest, BitIdenticalAcrossThreadsRunsAndBatches) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (const Config& base : RandomConfigs()) {
    Config c = base;
    c.tokens = 1031;
    SCOPED_TRACE(Describe(c));
    const std::vector<float> logits = MakeLogits(c, rng, false);
    const std::vector<float> bias = MakeBias(c, rng, false);
    const Routed a = RunRouter(one_, c, logits, bias);
    const Routed b = RunRouter(two_, c, logits, bias);
    const Routed again = RunRouter(two_, c, logits, bias);
    ASSERT_EQ(a.ids, b.ids);
    ASSERT_EQ(std::memcmp(a.weights.data(), b.weights.data(), 4 * a.weights.size()), 0);
    ASSERT_EQ(b.ids, again.ids);
    ASSERT_EQ(std::memcmp(b.weights.data(), again.weights.data(), 4 * b.weights.size()), 0);
    // Tokens 500..506 routed on their own.
    Config part = c;
    part.tokens = 7;
    const std::vector<float> sub(logits.begin() + 500 * c.experts,
                                 logits.begin() + 507 * c.experts);
    const Routed p = RunRouter(one_, part, sub, bias);
    ASSERT_TRUE(std::equal(p.ids.begin(), p.ids.end(), a.ids.begin() + 500 * c.top_k));
    ASSERT_EQ(std::memcmp(p.weights.data(), a.weights.data() + 500 * c.top_k, 4 * p.weights.size()),
              0);
  }
}

}  // namespace
}  // namespace moe
