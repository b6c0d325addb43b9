// Combine: per token, the fp32 sum over its slots in (expert id, slot) order of
// fma(fp32(y), w, acc), one rounding, then optionally round(routed + out). Checked bit for bit
// against an emulation of that order, within tolerance against float64, and on the exact
// cases of MOE_SEMANTICS 7.5 and 7.14.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"

namespace moe {
namespace {

using ::moe::testing::Decode;
using ::moe::testing::Encode;
using ::moe::testing::OpTol;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::moe::testing::TestSeed;

struct Inputs {
  int64_t tokens = 0, top_k = 0, cols = 0, y_ld = 0, out_ld = 0;
  DType dtype = DType::kF32;
  std::vector<int32_t> ids, slot_to_row;
  std::vector<float> weights;  // empty: null
  std::vector<double> y, out_init;
  bool add_to_out = false;
};

std::vector<uint8_t> RunCombine(Backend& backend, const Inputs& in, absl::Status* status) {
  const std::vector<uint8_t> y = Encode(in.y, in.dtype);
  std::vector<uint8_t> out = Encode(in.out_init, in.dtype);
  CombineArgs a;
  a.tokens = in.tokens;
  a.top_k = in.top_k;
  a.cols = in.cols;
  a.dtype = in.dtype;
  a.expert_out = y.data();
  a.expert_out_ld = in.y_ld;
  a.slot_to_row = in.slot_to_row.data();
  a.ids = in.ids.data();
  a.weights = in.weights.empty() ? nullptr : in.weights.data();
  a.add_to_out = in.add_to_out;
  a.out = out.data();
  a.out_ld = in.out_ld;
  *status = backend.Combine(a);
  return out;
}

std::vector<double> RunCombine(Backend& backend, const Inputs& in) {
  absl::Status status;
  const std::vector<uint8_t> out = RunCombine(backend, in, &status);
  EXPECT_TRUE(status.ok()) << status;
  return Decode(out.data(), in.tokens * in.out_ld, in.dtype);
}

double RoundAs(double v, DType dtype) {
  const float f = static_cast<float>(v);
  return dtype == DType::kBF16 ? RoundToBf16(f) : f;
}

// Slots of token t in (id, slot) order.
std::vector<int64_t> SlotOrder(const Inputs& in, int64_t t) {
  std::vector<int64_t> slots(in.top_k);
  std::iota(slots.begin(), slots.end(), t * in.top_k);
  std::stable_sort(slots.begin(), slots.end(),
                   [&](int64_t a, int64_t b) { return in.ids[a] < in.ids[b]; });
  return slots;
}

// The specified bits: fp32 fma accumulation in (id, slot) order, then the roundings.
std::vector<double> ExactReference(const Inputs& in) {
  std::vector<double> out = in.out_init;
  for (int64_t t = 0; t < in.tokens; ++t) {
    const std::vector<int64_t> slots = SlotOrder(in, t);
    for (int64_t j = 0; j < in.cols; ++j) {
      float acc = 0.0f;
      for (int64_t s : slots) {
        if (in.slot_to_row[s] < 0) continue;
        const float w = in.weights.empty() ? 1.0f : in.weights[s];
        acc = std::fma(static_cast<float>(in.y[in.slot_to_row[s] * in.y_ld + j]), w, acc);
      }
      double& o = out[t * in.out_ld + j];
      const double routed = RoundAs(acc, in.dtype);
      o = in.add_to_out ? RoundAs(routed + o, in.dtype) : routed;
    }
  }
  return out;
}

// float64 sums, no rounding: the accuracy reference.
std::vector<double> Float64Reference(const Inputs& in) {
  std::vector<double> out;
  for (int64_t t = 0; t < in.tokens; ++t) {
    for (int64_t j = 0; j < in.cols; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < in.top_k; ++k) {
        const int64_t s = t * in.top_k + k;
        if (in.slot_to_row[s] < 0) continue;
        const double w = in.weights.empty() ? 1.0 : in.weights[s];
        acc += in.y[in.slot_to_row[s] * in.y_ld + j] * w;
      }
      out.push_back(in.add_to_out ? acc + in.out_init[t * in.out_ld + j] : acc);
    }
  }
  return out;
}

// max |got - want| over the largest sum of term magnitudes (sum of |y w|, plus |out| with
// add_to_out): the scale of the rounding errors, which a cancelling sum does not shrink.
double ErrorOverTermScale(const std::vector<double>& got, const std::vector<double>& want,
                          const Inputs& in) {
  double scale = 1e-30, err = 0.0;
  for (int64_t t = 0; t < in.tokens; ++t) {
    for (int64_t j = 0; j < in.cols; ++j) {
      double sum = in.add_to_out ? std::fabs(in.out_init[t * in.out_ld + j]) : 0.0;
      for (int64_t k = 0; k < in.top_k; ++k) {
        const int64_t s = t * in.top_k + k;
        if (in.slot_to_row[s] < 0) continue;
        const double w = in.weights.empty() ? 1.0 : in.weights[s];
        sum += std::fabs(in.y[in.slot_to_row[s] * in.y_ld + j] * w);
      }
      scale = std::max(scale, sum);
    }
  }
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - want[i]));
  return err / scale;
}

std::vector<double> Valid(const std::vector<double>& all, const Inputs& in) {
  std::vector<double> v;
  for (int64_t t = 0; t < in.tokens; ++t) {
    v.insert(v.end(), all.begin() + t * in.out_ld, all.begin() + t * in.out_ld + in.cols);
  }
  return v;
}

struct Case {
  int64_t tokens, top_k, experts, cols, pad;
  bool forced;  // round-robin ids, repeats within a token when top_k > experts
};

Inputs MakeInputs(const Case& c, DType dtype, bool weighted, bool add, double drop,
                  std::mt19937_64& rng) {
  Inputs in;
  in.tokens = c.tokens;
  in.top_k = c.top_k;
  in.cols = c.cols;
  in.y_ld = c.cols + c.pad;
  in.out_ld = c.cols + 2 * c.pad;
  in.dtype = dtype;
  in.add_to_out = add;
  const int64_t slots = c.tokens * c.top_k;
  std::vector<int32_t> experts(c.experts);
  std::iota(experts.begin(), experts.end(), 0);
  for (int64_t t = 0; t < c.tokens; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);  // distinct, in random slot order
    for (int64_t k = 0; k < c.top_k; ++k) {
      in.ids.push_back(c.forced ? static_cast<int32_t>((t * c.top_k + k) % c.experts) : experts[k]);
    }
  }
  std::vector<int32_t> order(slots);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return in.ids[a] < in.ids[b]; });
  in.slot_to_row.resize(slots);
  for (int64_t r = 0; r < slots; ++r) in.slot_to_row[order[r]] = static_cast<int32_t>(r);
  std::bernoulli_distribution dropped(drop);
  for (int32_t& row : in.slot_to_row) {
    if (dropped(rng)) row = -1;
  }
  if (weighted) {
    for (double w : RandomUniform(slots, rng, 0.0, 1.0))
      in.weights.push_back(static_cast<float>(w));
  }
  in.y = RoundTo(RandomUniform(slots * in.y_ld, rng), dtype);
  in.out_init = add ? RoundTo(RandomUniform(c.tokens * in.out_ld, rng), dtype)
                    : std::vector<double>(c.tokens * in.out_ld, 77.0);
  return in;
}

class CombineTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(CombineTest, MatchesExactOrderAndFloat64Reference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  const std::vector<Case> cases = {{1, 1, 1, 1, 0, false},      {3, 2, 4, 7, 1, false},
                                   {17, 3, 8, 129, 0, false},   {64, 8, 128, 256, 0, false},
                                   {33, 6, 64, 1100, 5, false}, {5, 3, 4, 33, 2, true},
                                   {9, 5, 2, 64, 0, true},      {256, 8, 32, 512, 0, true}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Case& c : cases) {
      for (bool weighted : {false, true}) {
        for (bool add : {false, true}) {
          for (double drop : {0.0, 0.3}) {
            SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " T=", c.tokens, " K=", c.top_k,
                                      " E=", c.experts, " cols=", c.cols, c.forced ? " forced" : "",
                                      weighted ? " weighted" : "", add ? " add_to_out" : "",
                                      " drop=", drop));
            const Inputs in = MakeInputs(c, dtype, weighted, add, drop, rng);
            const std::vector<double> got = RunCombine(one_, in);
            const std::vector<double> got2 = RunCombine(two_, in);
            const std::vector<double> again = RunCombine(two_, in);
            ASSERT_EQ(got, got2);
            ASSERT_EQ(got, again);
            ASSERT_EQ(got, ExactReference(in));  // also: padding untouched
            EXPECT_LE(ErrorOverTermScale(Valid(got, in), Float64Reference(in), in), OpTol(dtype));
          }
        }
      }
    }
  }
}

Inputs OneToken(DType dtype, std::vector<double> y, std::vector<int32_t> ids) {
  Inputs in;
  in.tokens = 1;
  in.top_k = static_cast<int64_t>(y.size());
  in.cols = 1;
  in.y_ld = 1;
  in.out_ld = 1;
  in.dtype = dtype;
  in.y = std::move(y);
  in.ids = std::move(ids);
  // Row r of expert_out holds the slot at rank r of the (id, slot) order.
  std::vector<int64_t> order = SlotOrder(in, 0);
  std::vector<double> rows(in.top_k);
  in.slot_to_row.resize(in.top_k);
  for (int64_t r = 0; r < in.top_k; ++r) {
    in.slot_to_row[order[r]] = static_cast<int32_t>(r);
    rows[r] = in.y[order[r]];
  }
  in.y = rows;
  in.out_init = {0.0};
  return in;
}

// 7.5 (a): bf16 terms 1, b, b with b = 3 * 2^-10 sum in fp32 and round once: 1.0078125
// (rounding after every add would give 1.0).
TEST_F(CombineTest, OneRoundingOfTheFp32Sum) {
  const double b = 3.0 / 1024;
  Inputs in = OneToken(DType::kBF16, {1.0, b, b}, {0, 1, 2});
  EXPECT_EQ(RunCombine(one_, in)[0], 1.0078125);
  in.weights = {1.0f, 1.0f, 1.0f};
  EXPECT_EQ(RunCombine(two_, in)[0], 1.0078125);
  EXPECT_EQ(RoundToBf16(RoundToBf16(1.0f + b) + b), 1.0f);  // the per-add rounding
}

// The terms are summed in ascending expert id, not slot order: with slot ids [2, 0, 1] and
// f32 terms [1, 2^-24, 2^-24], id order gives 2^-23 + 1, slot order would give 1.
TEST_F(CombineTest, SumsInAscendingExpertId) {
  const double tiny = std::ldexp(1.0, -24);
  const Inputs in = OneToken(DType::kF32, {1.0, tiny, tiny}, {2, 0, 1});
  EXPECT_EQ(RunCombine(one_, in)[0], 1.0 + std::ldexp(1.0, -23));
  EXPECT_EQ(static_cast<float>(static_cast<float>(1.0 + tiny) + tiny), 1.0f);
}

// 7.14: out = bf16(bf16(sum y) + shared), the upstream two roundings. Here sum y = 1 + 2^-9
// rounds to 1, and 1 + 2^-8 ties to even (1); one rounding of 1 + 2^-9 + 2^-8 would give
// 1.0078125.
TEST_F(CombineTest, AddToOutRoundsTwiceLikeUpstream) {
  const double shared = std::ldexp(1.0, -8);
  Inputs in = OneToken(DType::kBF16, {1.0, std::ldexp(1.0, -9)}, {0, 1});
  in.add_to_out = true;
  in.out_init = {shared};
  const float one_rounding = RoundToBf16(static_cast<float>(shared + 1.0 + std::ldexp(1.0, -9)));
  ASSERT_EQ(one_rounding, 1.0078125f);
  EXPECT_EQ(RunCombine(one_, in)[0], 1.0);
  EXPECT_EQ(RunCombine(two_, in)[0], 1.0);
}

// Dropped slots (slot_to_row < 0) contribute nothing; a token with every slot dropped gets
// routed = 0, so add_to_out leaves out unchanged.
TEST_F(CombineTest, DroppedSlotsContributeNothing) {
  Inputs in = OneToken(DType::kBF16, {0.5, 0.25, 2.0}, {0, 1, 2});
  in.slot_to_row[1] = -1;
  EXPECT_EQ(RunCombine(one_, in)[0], 2.5);
  in.slot_to_row = {-1, -1, -1};
  in.out_init = {42.0};
  EXPECT_EQ(RunCombine(one_, in)[0], 0.0);
  in.add_to_out = true;
  EXPECT_EQ(RunCombine(one_, in)[0], 42.0);
}

TEST_F(CombineTest, RejectsRowsOutsideExpertOut) {
  Inputs in = OneToken(DType::kF32, {1.0, 2.0}, {0, 1});
  in.slot_to_row = {1, 2};  // row 2 = tokens * top_k: the limit
  absl::Status s;
  RunCombine(one_, in, &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "combine: slot_to_row[1]=2 is outside the expert_out rows [0, tokens * top_k=2)");
}

}  // namespace
}  // namespace moe
