// MOE_SEMANTICS section 7 through the whole block: 7.12 (weight updates rebuild exactly the
// touched fused slices), 7.13 (alias guard), 7.17 (capacity is opt-in and reported),
// 7.18 (score placement).
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

using MoeSemanticsTest = MoeBlockTest;

// 7.12: UpdateExpertWeights rebuilds exactly the fused slices it touches, and repacks exactly
// those for the GEMMs; the result equals a block built fresh from the new weights.
TEST_F(MoeSemanticsTest, WeightUpdatesRebuildTouchedSlices) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    MoeConfig c = SmallConfig(4, 2, 24, 16, dtype);
    c.force_balanced = true;  // every expert gets tokens
    NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 8;
    const std::vector<double> x = RoundTo(RandomUniform(t * 24, rng_), dtype);
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    EXPECT_EQ(block->counters().w13_rebuilds, 4);
    EXPECT_EQ(block->counters().w2t_rebuilds, 4);
    EXPECT_EQ(block->counters().w13_packs, 4);
    EXPECT_EQ(block->counters().w2t_packs, 4);
    const BlockOutput before = Run(block.get(), x, t);

    HostTensors host;
    const NaiveMoeWeights fresh = RandomWeights(c, rng_);
    const int64_t e = 2;
    struct Step {
      bool w1, w3, w2;
      int64_t w13_rebuilds, w2t_rebuilds;
    };
    for (const Step& step : {Step{true, false, false, 5, 4}, Step{false, false, true, 5, 5},
                             Step{false, true, false, 6, 5}, Step{true, true, true, 7, 6}}) {
      const Tensor w1 = host.Add(fresh.w1[e], dtype, Shape({16, 24}));
      const Tensor w3 = host.Add(fresh.w3[e], dtype, Shape({16, 24}));
      const Tensor w2 = host.Add(fresh.w2[e], dtype, Shape({24, 16}));
      ASSERT_TRUE(block
                      ->UpdateExpertWeights(e, step.w1 ? &w1 : nullptr, step.w3 ? &w3 : nullptr,
                                            step.w2 ? &w2 : nullptr)
                      .ok());
      if (step.w1) w.w1[e] = fresh.w1[e];
      if (step.w3) w.w3[e] = fresh.w3[e];
      if (step.w2) w.w2[e] = fresh.w2[e];
      EXPECT_EQ(block->counters().w13_rebuilds, step.w13_rebuilds);
      EXPECT_EQ(block->counters().w2t_rebuilds, step.w2t_rebuilds);
      // The packed copies the GEMMs read are refreshed with exactly the rebuilt slices.
      EXPECT_EQ(block->counters().w13_packs, step.w13_rebuilds);
      EXPECT_EQ(block->counters().w2t_packs, step.w2t_rebuilds);
      const BlockOutput after = Run(block.get(), x, t);
      auto rebuilt = Block(c, w);
      ASSERT_NE(rebuilt, nullptr);
      EXPECT_EQ(after.bytes, Run(rebuilt.get(), x, t).bytes);
      EXPECT_NE(after.bytes, before.bytes);
      EXPECT_LE(MaxRelError(after.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));
    }
  }
}

// 7.13: an output overlapping x (the same buffer, a view shifted by one row, a one-element
// overlap) is refused for in-place writing: x stays unchanged, the block returns its own
// buffer with the right result, and the trace says "copied". Adjacent views are in place.
TEST_F(MoeSemanticsTest, OutputOverlappingInputIsNotWrittenInPlace) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    MoeConfig c = SmallConfig(8, 2, 16, 8, dtype);
    c.num_shared_experts = 1;
    c.shared_inter = 8;
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 6, d = 16;
    const std::vector<double> x = RandomRoutableInput(c, w, t, rng_);
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const BlockOutput reference = Run(block.get(), x, t);
    EXPECT_EQ(block->last_trace().combine_path, CombinePath::kInPlace);
    EXPECT_LE(MaxRelError(reference.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));

    // One buffer of 3T rows; x sits at rows [T, 2T). Offsets in elements.
    std::vector<double> all(3 * t * d, 0.0);
    const int64_t x_offset = t * d;
    std::copy(x.begin(), x.end(), all.begin() + x_offset);
    struct Alias {
      const char* name;
      int64_t out_offset;
      bool in_place;
    };
    for (const Alias& a :
         {Alias{"same", x_offset, false}, Alias{"shifted", x_offset + d, false},
          Alias{"before", x_offset - d, false}, Alias{"last element", x_offset + t * d - 1, false},
          Alias{"first element", x_offset - t * d + 1, false},
          Alias{"adjacent after", x_offset + t * d, true},
          Alias{"adjacent before", x_offset - t * d, true}}) {
      SCOPED_TRACE(a.name);
      auto buf = Upload(dev_, all, dtype, Shape({3 * t * d}));
      ASSERT_TRUE(buf.ok());
      const int64_t elem = DTypeSize(dtype);
      char* base = static_cast<char*>(buf->buffer->data());
      const Device device = dev_.backend->device();
      const Tensor xt = Tensor::Wrap(base + x_offset * elem, device, dtype, Shape({t, d}));
      const Tensor out = Tensor::Wrap(base + a.out_offset * elem, device, dtype, Shape({t, d}));
      const std::vector<uint8_t> x_bytes = DownloadBytes(dev_.backend.get(), xt);
      auto result = block->Forward(xt, out);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(DownloadBytes(dev_.backend.get(), xt), x_bytes) << "x was modified";
      EXPECT_EQ(DownloadBytes(dev_.backend.get(), *result), reference.bytes);
      EXPECT_EQ(result->data() == out.data(), a.in_place);
      EXPECT_EQ(result->Overlaps(xt), false);
      EXPECT_EQ(block->last_trace().combine_path,
                a.in_place ? CombinePath::kInPlace : CombinePath::kCopied);
    }
    EXPECT_EQ(block->counters().copied_combines, 5);
    EXPECT_EQ(block->counters().in_place_combines, 3);
  }
}

// 7.17: every token to one expert. Dropless (the default) equals the reference; capacity mode
// keeps ceil(T*K/E * 1.25) rows of it (the lowest tokens), reports the drops, and differs.
TEST_F(MoeSemanticsTest, CapacityModeIsOptInAndReported) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    MoeConfig c = SmallConfig(4, 1, 16, 8, dtype);
    c.num_shared_experts = 1;
    c.shared_inter = 8;
    NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 16;
    std::vector<double> x;
    RouteExplicitly(c, std::vector<std::set<int>>(t, {1}), rng_, &w, &x);
    auto dropless = Block(c, w);
    ASSERT_NE(dropless, nullptr);
    const BlockOutput full = Run(dropless.get(), x, t);
    EXPECT_EQ(dropless->last_trace().dropped_rows, 0);
    EXPECT_EQ(dropless->last_trace().expert_capacity, 0);
    EXPECT_LE(MaxRelError(full.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));

    c.capacity_factor = 1.25f;  // capacity = ceil(16 * 1 / 4 * 1.25) = 5
    auto capped = Block(c, w);
    ASSERT_NE(capped, nullptr);
    const BlockOutput dropped = Run(capped.get(), x, t);
    const MoeTrace& trace = capped->last_trace();
    EXPECT_EQ(trace.counts, (std::vector<int64_t>{0, 16, 0, 0}));
    EXPECT_EQ(trace.expert_capacity, 5);
    EXPECT_EQ(trace.dropped_rows, 11);
    EXPECT_EQ(capped->counters().dropped_rows, 11);
    EXPECT_EQ(trace.expert_path, ExpertPath::kGrouped);
    EXPECT_LE(MaxRelError(dropped.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));
    // Tokens past the capacity lost their routed term.
    const int64_t row = 16 * DTypeSize(dtype);
    for (int64_t tok = 5; tok < t; ++tok) {
      EXPECT_FALSE(std::equal(full.bytes.begin() + tok * row, full.bytes.begin() + (tok + 1) * row,
                              dropped.bytes.begin() + tok * row))
          << "token " << tok;
    }
    // Within capacity nothing is dropped and the bits equal the dropless block's.
    std::vector<double> balanced;
    std::vector<std::set<int>> spread;
    for (int64_t tok = 0; tok < t; ++tok) spread.push_back({static_cast<int>(tok % 4)});
    NaiveMoeWeights w2 = w;
    RouteExplicitly(c, spread, rng_, &w2, &balanced);
    EXPECT_EQ(Run(capped.get(), balanced, t).bytes, Run(dropless.get(), balanced, t).bytes);
    EXPECT_EQ(capped->last_trace().dropped_rows, 0);
  }
}

// Capacity drops that leave every expert exactly full take the batched path over the
// compacted rows: forced balance gives 8 rows per expert, capacity 4 keeps each expert's
// first 4 (its lowest tokens).
TEST_F(MoeSemanticsTest, CapacityDropsOnTheBatchedPath) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    MoeConfig c = SmallConfig(4, 2, 16, 8, dtype);
    c.force_balanced = true;
    c.capacity_factor = 0.5f;  // ceil(16 * 2 / 4 * 0.5) = 4
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 16;
    const std::vector<double> x = RoundTo(RandomUniform(t * 16, rng_), dtype);
    auto block = Block(c, w);
    ASSERT_NE(block, nullptr);
    const BlockOutput got = Run(block.get(), x, t);
    const MoeTrace& trace = block->last_trace();
    EXPECT_EQ(trace.counts, (std::vector<int64_t>{8, 8, 8, 8}));
    EXPECT_EQ(trace.expert_capacity, 4);
    EXPECT_EQ(trace.dropped_rows, 16);
    EXPECT_EQ(trace.expert_path, ExpertPath::kBatched);
    EXPECT_LE(MaxRelError(got.values, NaiveMoe(c, w, x, t)), BlockTol(dtype));
    block->set_batched_path_enabled(false);
    EXPECT_EQ(Run(block.get(), x, t).bytes, got.bytes);
    EXPECT_EQ(block->last_trace().expert_path, ExpertPath::kGrouped);
  }
}

// 7.18: K=1, one expert, weight 0.5: "before" computes FFN(0.5 x), "after" 0.5 FFN(x).
TEST_F(MoeSemanticsTest, ScorePlacementIsAConfigChoice) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    MoeConfig c = SmallConfig(1, 1, 16, 16, dtype);
    c.route_scale = 0.5f;  // softmax over one expert = 1
    const NaiveMoeWeights w = RandomWeights(c, rng_);
    const int64_t t = 4, d = 16;
    const std::vector<double> x = RoundTo(RandomUniform(t * d, rng_, -3, 3), dtype);
    std::vector<double> want_before, want_after;
    for (int64_t tok = 0; tok < t; ++tok) {
      std::vector<double> row(x.begin() + tok * d, x.begin() + (tok + 1) * d);
      for (double v : NaiveFfn(w.w1[0], w.w3[0], w.w2[0], 16, row)) want_after.push_back(0.5 * v);
      for (double& v : row) v *= 0.5;
      for (double v : NaiveFfn(w.w1[0], w.w3[0], w.w2[0], 16, row)) want_before.push_back(v);
    }
    auto after = Block(c, w);
    c.score_before_experts = true;
    auto before = Block(c, w);
    ASSERT_TRUE(after && before);
    const BlockOutput got_after = Run(after.get(), x, t);
    const BlockOutput got_before = Run(before.get(), x, t);
    EXPECT_LE(MaxRelError(got_after.values, want_after), BlockTol(dtype));
    EXPECT_LE(MaxRelError(got_before.values, want_before), BlockTol(dtype));
    EXPECT_GT(MaxRelError(got_before.values, got_after.values), 3 * BlockTol(dtype));
  }
}

}  // namespace
}  // namespace moe::testing
