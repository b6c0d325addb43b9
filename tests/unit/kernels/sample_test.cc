// Sample: greedy ties, each logits processor against a float64 reference of the filtered
// distribution, draw frequencies against it, reproducibility from (seed, step), thread-count
// independence, the caller's workspace (checked at its exact limit, and results that do not
// depend on its size or alignment), and validation at the exact limits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"

namespace moe {
namespace {

using ::moe::testing::TestSeed;

// The filtered distribution of one row as HF's processors compute it, in float64; 0 for a
// removed token. Written apart from the kernel: top-p in HF's ascending-cumsum form.
std::vector<double> ReferenceDistribution(const std::vector<float>& logits, const SamplingParams& p,
                                          const std::vector<int32_t>& seen) {
  const int64_t n = logits.size();
  std::vector<double> z(logits.begin(), logits.end());
  for (int32_t id : std::set<int32_t>(seen.begin(), seen.end())) {
    z[id] = z[id] > 0 ? z[id] / p.repetition_penalty : z[id] * p.repetition_penalty;
  }
  const double ninf = -std::numeric_limits<double>::infinity();
  if (p.temperature == 0.0f) {
    std::vector<double> q(n, 0.0);
    q[std::max_element(z.begin(), z.end()) - z.begin()] = 1.0;
    return q;
  }
  for (double& v : z) v /= p.temperature;
  const auto softmax = [&](const std::vector<double>& s) {
    const double m = *std::max_element(s.begin(), s.end());
    std::vector<double> q(n);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += q[i] = s[i] == ninf ? 0.0 : std::exp(s[i] - m);
    for (double& v : q) v /= sum;
    return q;
  };
  if (p.top_k > 0 && p.top_k < n) {
    std::vector<double> sorted = z;
    std::sort(sorted.rbegin(), sorted.rend());
    for (double& v : z) {
      if (v < sorted[p.top_k - 1]) v = ninf;
    }
  }
  if (p.top_p < 1.0f) {
    const std::vector<double> q = softmax(z);
    std::vector<int64_t> asc(n);
    for (int64_t i = 0; i < n; ++i) asc[i] = i;
    // Ascending probability, ties: higher id first (so the lower id ranks higher).
    std::sort(asc.begin(), asc.end(),
              [&](int64_t a, int64_t b) { return z[a] < z[b] || (z[a] == z[b] && a > b); });
    double cum = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
      cum += q[asc[i]];
      if (cum <= 1.0 - p.top_p) z[asc[i]] = ninf;
    }
  }
  if (p.min_p > 0.0f) {
    const std::vector<double> q = softmax(z);
    const double top = *std::max_element(q.begin(), q.end());
    for (int64_t i = 0; i < n; ++i) {
      if (q[i] < p.min_p * top) z[i] = ninf;
    }
  }
  return softmax(z);
}

struct Draws {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<float> raw_logprobs;
};

// Samples `rows` rows that share one logits row (copied with ld = vocab + 3) and one params,
// row r drawing at step first_step + r.
absl::Status SampleShared(Backend* b, const std::vector<float>& logits, SamplingParams p,
                          int64_t rows, uint64_t first_step, const std::vector<int32_t>& seen,
                          Draws* run) {
  const int64_t vocab = logits.size(), ld = vocab + 3;
  std::vector<float> all(rows * ld, 1e30f);
  std::vector<SamplingParams> params(rows, p);
  std::vector<int64_t> offsets(rows + 1);
  std::vector<int32_t> seen_all;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(logits.begin(), logits.end(), all.begin() + r * ld);
    params[r].step = first_step + r;
    seen_all.insert(seen_all.end(), seen.begin(), seen.end());
    offsets[r + 1] = seen_all.size();
  }
  run->ids.assign(rows, -1);
  run->logprobs.assign(rows, 0.0f);
  run->raw_logprobs.assign(rows, 0.0f);
  SampleArgs a;
  a.rows = rows;
  a.vocab = vocab;
  a.logits = all.data();
  a.ld = ld;
  a.params = params.data();
  a.seen_offsets = offsets.data();
  a.seen_ids = seen_all.data();
  a.ids = run->ids.data();
  a.logprobs = run->logprobs.data();
  a.raw_logprobs = run->raw_logprobs.data();
  std::vector<char> workspace(b->SampleWorkspaceBytes(rows, vocab));
  a.workspace = workspace.data();
  a.workspace_bytes = workspace.size();
  return b->Sample(a);
}

std::vector<float> RandomLogits(int64_t n, std::mt19937_64& rng, double scale) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(d(rng));
  return v;
}

class SampleTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(SampleTest, GreedyTiesGoToLowestId) {
  SamplingParams p;
  p.temperature = 0.0f;
  Draws run;
  ASSERT_TRUE(SampleShared(&one_, {1.0f, 3.0f, -2.0f, 3.0f, 2.0f}, p, 4, 0, {}, &run).ok());
  for (int64_t r = 0; r < 4; ++r) {
    EXPECT_EQ(run.ids[r], 1);
    EXPECT_EQ(run.logprobs[r], 0.0f);
  }
  const double raw =
      3.0 - std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(-2.0) + std::exp(2.0));
  EXPECT_NEAR(run.raw_logprobs[0], raw, 1e-6);
  // -inf logits are masked tokens, never chosen.
  const float ninf = -std::numeric_limits<float>::infinity();
  ASSERT_TRUE(SampleShared(&one_, {ninf, ninf, -5.0f}, p, 1, 0, {}, &run).ok());
  EXPECT_EQ(run.ids[0], 2);
}

struct FilterCase {
  std::string name;
  SamplingParams params;
  std::vector<int32_t> seen;
};

std::vector<FilterCase> FilterCases() {
  std::vector<FilterCase> cases;
  const auto add = [&](std::string name, float t, int32_t k, float top_p, float min_p,
                       float penalty, std::vector<int32_t> seen) {
    SamplingParams p;
    p.temperature = t;
    p.top_k = k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = penalty;
    cases.push_back({std::move(name), p, std::move(seen)});
  };
  add("plain", 1.0f, 0, 1.0f, 0.0f, 1.0f, {});
  add("temperature_0.5", 0.5f, 0, 1.0f, 0.0f, 1.0f, {});
  add("temperature_2", 2.0f, 0, 1.0f, 0.0f, 1.0f, {});
  add("top_k_5", 1.0f, 5, 1.0f, 0.0f, 1.0f, {});
  add("top_k_1", 1.0f, 1, 1.0f, 0.0f, 1.0f, {});
  add("top_p_0.6", 1.0f, 0, 0.6f, 0.0f, 1.0f, {});
  add("top_p_0.9_t_0.7", 0.7f, 0, 0.9f, 0.0f, 1.0f, {});
  add("min_p_0.1", 1.0f, 0, 1.0f, 0.1f, 1.0f, {});
  add("penalty_1.5", 1.0f, 0, 1.0f, 0.0f, 1.5f, {0, 3, 3, 7, 11});
  add("penalty_0.5", 1.0f, 0, 1.0f, 0.0f, 0.5f, {1, 2, 9});
  add("all", 0.8f, 12, 0.85f, 0.05f, 1.3f, {0, 1, 2, 3, 4, 5});
  return cases;
}

// The reported log-prob is that of the reference distribution at the chosen id, and the draw
// frequencies over many steps match it (a chi-square bound far from the deterministic result).
TEST_F(SampleTest, FiltersMatchFloat64Reference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  constexpr int64_t kVocab = 20;
  constexpr int64_t kDraws = 20000;
  for (const FilterCase& c : FilterCases()) {
    SCOPED_TRACE(c.name);
    const std::vector<float> logits = RandomLogits(kVocab, rng, 1.5);
    const std::vector<double> q = ReferenceDistribution(logits, c.params, c.seen);
    SamplingParams p = c.params;
    p.seed = rng();
    Draws run;
    ASSERT_TRUE(SampleShared(&one_, logits, p, kDraws, 1000, c.seen, &run).ok());
    double m = -1e300, sum = 0;
    for (float x : logits) m = std::max<double>(m, x);
    for (float x : logits) sum += std::exp(x - m);
    std::vector<int64_t> counts(kVocab, 0);
    for (int64_t r = 0; r < kDraws; ++r) {
      const int32_t id = run.ids[r];
      ASSERT_GE(id, 0);
      ASSERT_LT(id, kVocab);
      ASSERT_GT(q[id], 0.0) << "removed token " << id << " drawn at row " << r;
      ASSERT_NEAR(run.logprobs[r], std::log(q[id]), 1e-5) << "row " << r;
      ASSERT_NEAR(run.raw_logprobs[r], (logits[id] - m) - std::log(sum), 1e-5) << "row " << r;
      ++counts[id];
    }
    double chi2 = 0;
    int df = -1;
    for (int64_t v = 0; v < kVocab; ++v) {
      if (q[v] == 0.0) continue;
      const double expected = q[v] * kDraws;
      chi2 += (counts[v] - expected) * (counts[v] - expected) / expected;
      ++df;
    }
    // df <= 19: the 99.99th percentile of chi-square(19) is about 49.
    EXPECT_LT(chi2, df + 8.0 * std::sqrt(2.0 * std::max(df, 1)) + 5.0)
        << "chi2=" << chi2 << " df=" << df;
  }
}

TEST_F(SampleTest, TopKKeepsTiesAtThreshold) {
  SamplingParams p;
  p.top_k = 2;
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 1.0f, -1.0f};
  Draws run;
  ASSERT_TRUE(SampleShared(&one_, logits, p, 3000, 0, {}, &run).ok());
  std::set<int32_t> drawn(run.ids.begin(), run.ids.end());
  EXPECT_EQ(drawn, (std::set<int32_t>{1, 2, 3}));
  const double lse = std::log(std::exp(2.0) + 2 * std::exp(1.0));
  for (int64_t r = 0; r < 3000; ++r) {
    ASSERT_NEAR(run.logprobs[r], logits[run.ids[r]] - lse, 1e-6);
  }
}

TEST_F(SampleTest, TopPBoundaryTieGoesToLowerId) {
  // q = {0.25, 0.25, 0.25, 0.25}; top_p = 0.5 keeps the first two in (desc q, asc id) order.
  SamplingParams p;
  p.top_p = 0.5f;
  Draws run;
  ASSERT_TRUE(SampleShared(&one_, {0.0f, 0.0f, 0.0f, 0.0f}, p, 2000, 0, {}, &run).ok());
  std::set<int32_t> drawn(run.ids.begin(), run.ids.end());
  EXPECT_EQ(drawn, (std::set<int32_t>{0, 1}));
}

TEST_F(SampleTest, RepetitionPenaltyPositiveAndNegativeLogits) {
  // penalty 2 on ids 0 (logit 2 -> 1) and 1 (logit -2 -> -4); id 1 listed twice counts once.
  SamplingParams p;
  p.temperature = 0.0f;
  p.repetition_penalty = 2.0f;
  const std::vector<float> logits = {2.0f, -2.0f, 1.5f, 0.0f};
  Draws run;
  ASSERT_TRUE(SampleShared(&one_, logits, p, 1, 0, {0, 1, 1}, &run).ok());
  EXPECT_EQ(run.ids[0], 2);
  p.temperature = 1.0f;
  ASSERT_TRUE(SampleShared(&one_, logits, p, 500, 0, {0, 1, 1}, &run).ok());
  const std::vector<double> penalized = {1.0, -4.0, 1.5, 0.0};
  double sum = 0;
  for (double z : penalized) sum += std::exp(z);
  for (int64_t r = 0; r < 500; ++r) {
    ASSERT_NEAR(run.logprobs[r], penalized[run.ids[r]] - std::log(sum), 1e-6);
  }
  // A penalty below 1 rewards: 2 -> 4, -2 -> -1; greedy picks id 0.
  p.temperature = 0.0f;
  p.repetition_penalty = 0.5f;
  ASSERT_TRUE(SampleShared(&one_, {2.0f, -2.0f, 3.5f}, p, 1, 0, {0, 1}, &run).ok());
  EXPECT_EQ(run.ids[0], 0);
  // 0 stays 0 (HF divides non-negative logits).
  p.repetition_penalty = 3.0f;
  ASSERT_TRUE(SampleShared(&one_, {0.0f, -0.5f}, p, 1, 0, {0, 1}, &run).ok());
  EXPECT_EQ(run.ids[0], 0);
}

TEST_F(SampleTest, ReproducibleFromSeedAndStep) {
  std::mt19937_64 rng(TestSeed());
  const std::vector<float> logits = RandomLogits(1000, rng, 0.5);
  SamplingParams p;
  p.seed = 42;
  Draws a, b, c;
  ASSERT_TRUE(SampleShared(&one_, logits, p, 200, 7, {}, &a).ok());
  ASSERT_TRUE(SampleShared(&one_, logits, p, 200, 7, {}, &b).ok());
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.logprobs, b.logprobs);
  // A row depends only on its own (seed, step): steps 8.. from another batch agree.
  ASSERT_TRUE(SampleShared(&one_, logits, p, 50, 8, {}, &c).ok());
  EXPECT_EQ(std::vector<int32_t>(a.ids.begin() + 1, a.ids.begin() + 51), c.ids);
  p.seed = 43;
  ASSERT_TRUE(SampleShared(&one_, logits, p, 200, 7, {}, &c).ok());
  EXPECT_NE(a.ids, c.ids);
  // The sequence over steps is not constant.
  EXPECT_GT(std::set<int32_t>(a.ids.begin(), a.ids.end()).size(), 50u);
}

TEST_F(SampleTest, OneAndTwoThreadsIdentical) {
  std::mt19937_64 rng(TestSeed());
  constexpr int64_t kRows = 64, kVocab = 4096;
  std::vector<float> logits = RandomLogits(kRows * kVocab, rng, 2.0);
  std::vector<SamplingParams> params(kRows);
  std::vector<int64_t> offsets(kRows + 1, 0);
  std::vector<int32_t> seen;
  for (int64_t r = 0; r < kRows; ++r) {
    params[r].temperature = r % 4 == 0 ? 0.0f : 0.5f + 0.1f * (r % 7);
    params[r].top_k = r % 3 == 0 ? 50 : 0;
    params[r].top_p = r % 5 == 0 ? 0.9f : 1.0f;
    params[r].min_p = r % 2 == 0 ? 0.02f : 0.0f;
    params[r].repetition_penalty = 1.2f;
    params[r].seed = 1000 + r;
    params[r].step = r;
    for (int i = 0; i < 10; ++i) seen.push_back(static_cast<int32_t>((r * 37 + i * 101) % kVocab));
    offsets[r + 1] = seen.size();
  }
  std::vector<Draws> runs(2);
  Backend* backends[] = {&one_, &two_};
  for (int i = 0; i < 2; ++i) {
    runs[i].ids.assign(kRows, -1);
    runs[i].logprobs.assign(kRows, 0.0f);
    runs[i].raw_logprobs.assign(kRows, 0.0f);
    SampleArgs a;
    a.rows = kRows;
    a.vocab = kVocab;
    a.logits = logits.data();
    a.ld = kVocab;
    a.params = params.data();
    a.seen_offsets = offsets.data();
    a.seen_ids = seen.data();
    a.ids = runs[i].ids.data();
    a.logprobs = runs[i].logprobs.data();
    a.raw_logprobs = runs[i].raw_logprobs.data();
    std::vector<char> workspace(backends[i]->SampleWorkspaceBytes(kRows, kVocab));
    a.workspace = workspace.data();
    a.workspace_bytes = workspace.size();
    ASSERT_TRUE(backends[i]->Sample(a).ok());
  }
  EXPECT_EQ(runs[0].ids, runs[1].ids);
  EXPECT_EQ(runs[0].logprobs, runs[1].logprobs);
  EXPECT_EQ(runs[0].raw_logprobs, runs[1].raw_logprobs);
}

// Validation of one row's params; returns the status of a 2-row call whose row 1 has `p`.
absl::Status SampleWith(Backend* b, const SamplingParams& p) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<SamplingParams> params = {SamplingParams(), p};
  int32_t ids[2];
  SampleArgs a;
  a.rows = 2;
  a.vocab = 3;
  a.logits = logits.data();
  a.ld = 3;
  a.params = params.data();
  a.ids = ids;
  std::vector<char> workspace(b->SampleWorkspaceBytes(a.rows, a.vocab));
  a.workspace = workspace.data();
  a.workspace_bytes = workspace.size();
  return b->Sample(a);
}

TEST_F(SampleTest, ParamsValidatedAtExactLimits) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float denorm = std::numeric_limits<float>::denorm_min();
  const float above_one = std::nextafter(1.0f, 2.0f);
  struct Case {
    void (*set)(SamplingParams*, float);
    float value;
    std::string error;  // empty: accepted
  };
  const auto temperature = [](SamplingParams* p, float v) { p->temperature = v; };
  const auto top_p = [](SamplingParams* p, float v) { p->top_p = v; };
  const auto min_p = [](SamplingParams* p, float v) { p->min_p = v; };
  const auto penalty = [](SamplingParams* p, float v) { p->repetition_penalty = v; };
  const auto top_k = [](SamplingParams* p, float v) { p->top_k = static_cast<int32_t>(v); };
  const std::vector<Case> cases = {
      {temperature, -denorm,
       "sample: params[1].temperature=-1.40129846e-45 must be finite and >= 0"},
      {temperature, 0.0f, ""},
      {temperature, denorm, ""},
      {temperature, 1e30f, ""},
      {temperature, inf, "sample: params[1].temperature=inf must be finite and >= 0"},
      {temperature, nan, "sample: params[1].temperature=nan must be finite and >= 0"},
      {top_k, -1, "sample: params[1].top_k=-1 is negative"},
      {top_k, 0, ""},
      {top_k, 1, ""},
      {top_k, 1000, ""},
      {top_p, 0.0f, "sample: params[1].top_p=0 is outside (0, 1]"},
      {top_p, -1.0f, "sample: params[1].top_p=-1 is outside (0, 1]"},
      {top_p, denorm, ""},
      {top_p, 1.0f, ""},
      {top_p, above_one, "sample: params[1].top_p=1.00000012 is outside (0, 1]"},
      {top_p, nan, "sample: params[1].top_p=nan is outside (0, 1]"},
      {min_p, -denorm, "sample: params[1].min_p=-1.40129846e-45 is outside [0, 1]"},
      {min_p, 0.0f, ""},
      {min_p, 1.0f, ""},
      {min_p, above_one, "sample: params[1].min_p=1.00000012 is outside [0, 1]"},
      {min_p, nan, "sample: params[1].min_p=nan is outside [0, 1]"},
      {penalty, 0.0f, "sample: params[1].repetition_penalty=0 must be finite and > 0"},
      {penalty, -1.0f, "sample: params[1].repetition_penalty=-1 must be finite and > 0"},
      {penalty, denorm, ""},
      {penalty, 1.0f, ""},
      {penalty, inf, "sample: params[1].repetition_penalty=inf must be finite and > 0"},
      {penalty, nan, "sample: params[1].repetition_penalty=nan must be finite and > 0"},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(&p, c.value);
    const absl::Status s = SampleWith(&one_, p);
    SCOPED_TRACE(absl::StrCat("value=", c.value, " want=", c.error));
    if (c.error.empty()) {
      EXPECT_TRUE(s.ok()) << s;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_EQ(s.message(), c.error);
    }
  }
  // top_p just above 0 and min_p = 1 keep only the most likely token.
  SamplingParams p;
  p.top_p = denorm;
  Draws run;
  ASSERT_TRUE(SampleShared(&one_, {0.0f, 3.0f, 3.0f, 1.0f}, p, 100, 0, {}, &run).ok());
  EXPECT_EQ(std::set<int32_t>(run.ids.begin(), run.ids.end()), std::set<int32_t>{1});
  p = SamplingParams();
  p.min_p = 1.0f;
  ASSERT_TRUE(SampleShared(&one_, {0.0f, 3.0f, 3.0f, 1.0f}, p, 100, 0, {}, &run).ok());
  EXPECT_EQ(std::set<int32_t>(run.ids.begin(), run.ids.end()), (std::set<int32_t>{1, 2}));
}

TEST_F(SampleTest, ShapesSeenIdsAndLogitsValidated) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  SamplingParams params[2];
  int32_t ids[2] = {-7, -7};
  int64_t offsets[3] = {0, 1, 2};
  int32_t seen[2] = {2, 0};
  SampleArgs a;
  a.rows = 2;
  a.vocab = 3;
  a.logits = logits.data();
  a.ld = 3;
  a.params = params;
  a.seen_offsets = offsets;
  a.seen_ids = seen;
  a.ids = ids;
  std::vector<char> workspace(one_.SampleWorkspaceBytes(a.rows, a.vocab));
  a.workspace = workspace.data();
  a.workspace_bytes = workspace.size();
  const auto message = [&](const SampleArgs& args) {
    return std::string(one_.Sample(args).message());
  };
  EXPECT_EQ(message(a), "");
  SampleArgs b = a;
  b.ld = 2;
  EXPECT_EQ(message(b), "sample: ld=2 is less than the row length 3");
  b = a;
  b.vocab = 0;
  EXPECT_EQ(message(b), "sample: vocab=0 must be positive");
  b = a;
  b.rows = 0;
  b.logits = nullptr;
  EXPECT_EQ(message(b), "");
  b = a;
  b.params = nullptr;
  EXPECT_EQ(message(b), "sample: params is null");
  seen[1] = 3;
  EXPECT_EQ(message(a), "sample: seen_ids[1]=3 is outside [0, vocab=3)");
  seen[1] = -1;
  EXPECT_EQ(message(a), "sample: seen_ids[1]=-1 is outside [0, vocab=3)");
  seen[1] = 2;
  offsets[1] = 3;
  EXPECT_EQ(message(a), "sample: seen_offsets[2]=2 is less than seen_offsets[1]=3");
  offsets[1] = 1;
  offsets[0] = 1;
  EXPECT_EQ(message(a), "sample: seen_offsets[0]=1 is not 0");
  offsets[0] = 0;
  b = a;
  b.seen_ids = nullptr;
  EXPECT_EQ(message(b), "sample: seen_ids is null");
  // Bad logits name the row and column and write nothing.
  ids[0] = ids[1] = -7;
  logits[4] = nan;
  EXPECT_EQ(message(a), "sample: logits[1, 1]=nan is NaN or +inf");
  logits[4] = inf;
  EXPECT_EQ(message(a), "sample: logits[1, 1]=inf is NaN or +inf");
  logits[3] = logits[4] = logits[5] = -inf;
  EXPECT_EQ(message(a), "sample: logits row 1 is all -inf (vocab=3)");
  EXPECT_EQ(ids[0], -7);
  EXPECT_EQ(ids[1], -7);
}

TEST_F(SampleTest, WorkspaceValidatedAtExactLimit) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::vector<SamplingParams> params(2);
  int32_t ids[2] = {-7, -7};
  SampleArgs a;
  a.rows = 2;
  a.vocab = 3;
  a.logits = logits.data();
  a.ld = 3;
  a.params = params.data();
  a.ids = ids;
  for (CpuBackend* b : {&one_, &two_}) {
    const size_t need = b->SampleWorkspaceBytes(a.rows, a.vocab);
    ASSERT_GT(need, 0u);
    std::vector<char> workspace(need);
    a.workspace = workspace.data();
    a.workspace_bytes = need - 1;
    absl::Status s = b->Sample(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message(), absl::StrCat("sample: workspace_bytes=", need - 1, " is less than the ",
                                        need, " bytes needed for rows=2, vocab=3"));
    EXPECT_EQ(ids[0], -7);
    a.workspace_bytes = 0;
    EXPECT_EQ(b->Sample(a).message(), absl::StrCat("sample: workspace_bytes=0 is less than the ",
                                                   need, " bytes needed for rows=2, vocab=3"));
    a.workspace = nullptr;
    a.workspace_bytes = need;
    EXPECT_EQ(b->Sample(a).message(), absl::StrCat("sample: workspace is null; ", need,
                                                   " bytes are needed for rows=2, vocab=3"));
    EXPECT_EQ(ids[0], -7);
    a.workspace = workspace.data();
    s = b->Sample(a);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_GE(ids[0], 0);
    EXPECT_LT(ids[0], 3);
    ids[0] = ids[1] = -7;
  }
  // No rows need no workspace.
  EXPECT_EQ(one_.SampleWorkspaceBytes(0, 3), 0u);
  a.rows = 0;
  a.workspace = nullptr;
  a.workspace_bytes = 0;
  EXPECT_TRUE(one_.Sample(a).ok());
  // The need grows with rows and vocab; with two threads, up to two slots.
  EXPECT_LE(one_.SampleWorkspaceBytes(1, 4096), one_.SampleWorkspaceBytes(1, 4097));
  EXPECT_EQ(one_.SampleWorkspaceBytes(64, 4096), one_.SampleWorkspaceBytes(1, 4096));
  EXPECT_GT(two_.SampleWorkspaceBytes(64, 4096), one_.SampleWorkspaceBytes(64, 4096));
}

TEST_F(SampleTest, ResultsIndependentOfWorkspaceSizeAndAlignment) {
  std::mt19937_64 rng(TestSeed());
  constexpr int64_t kRows = 64, kVocab = 4096;
  const std::vector<float> logits = RandomLogits(kRows * kVocab, rng, 2.0);
  std::vector<SamplingParams> params(kRows);
  for (int64_t r = 0; r < kRows; ++r) {
    params[r].temperature = r % 4 == 0 ? 0.0f : 0.7f;
    params[r].top_k = r % 3 == 0 ? 40 : 0;
    params[r].top_p = r % 5 == 0 ? 0.9f : 1.0f;
    params[r].min_p = r % 2 == 0 ? 0.01f : 0.0f;
    params[r].seed = 77 + r;
    params[r].step = r;
  }
  for (CpuBackend* b : {&one_, &two_}) {
    const size_t need = b->SampleWorkspaceBytes(kRows, kVocab);
    // Each case: (offset of the workspace into the buffer, workspace_bytes).
    const std::vector<std::pair<size_t, size_t>> cases = {
        {0, need}, {1, need}, {63, need}, {0, need + 1}, {8, 10 * need}};
    Draws first;
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("offset=", cases[i].first, " bytes=", cases[i].second));
      // Garbage in the workspace must not matter either.
      std::vector<char> buffer(cases[i].first + cases[i].second, static_cast<char>(0x7f + i));
      Draws run;
      run.ids.assign(kRows, -1);
      run.logprobs.assign(kRows, 0.0f);
      run.raw_logprobs.assign(kRows, 0.0f);
      SampleArgs a;
      a.rows = kRows;
      a.vocab = kVocab;
      a.logits = logits.data();
      a.ld = kVocab;
      a.params = params.data();
      a.ids = run.ids.data();
      a.logprobs = run.logprobs.data();
      a.raw_logprobs = run.raw_logprobs.data();
      a.workspace = buffer.data() + cases[i].first;
      a.workspace_bytes = cases[i].second;
      const absl::Status s = b->Sample(a);
      ASSERT_TRUE(s.ok()) << s;
      if (i == 0) {
        first = run;
        continue;
      }
      EXPECT_EQ(run.ids, first.ids);
      EXPECT_EQ(run.logprobs, first.logprobs);
      EXPECT_EQ(run.raw_logprobs, first.raw_logprobs);
    }
  }
}

}  // namespace
}  // namespace moe
