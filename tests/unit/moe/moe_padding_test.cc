// MOE_SEMANTICS 7.6, padding is inert, at the op level (the block itself never pads): the
// expert chain GroupedGemm(w13) -> SwiGLU -> GroupedGemm(w2t) -> Combine over counts
// [0, 3, 5, 1, 0, 7], then again with every group padded to a multiple of 8 (at least 8 rows,
// so empty experts get pad rows too) whose pad rows are NaN. The real outputs must be
// bit-identical and finite: pad rows never reach the combine and do not disturb real rows.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_util.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

constexpr int64_t kExperts = 6, kHidden = 32, kInter = 16, kAlign = 8;

template <typename T>
absl::StatusOr<std::unique_ptr<Buffer>> UploadRaw(TestDevice& dev, const std::vector<T>& v) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> b, dev.allocator->Allocate(v.size() * sizeof(T)));
  MOE_RETURN_IF_ERROR(dev.backend->CopyFromHost(b->data(), v.data(), v.size() * sizeof(T)));
  return b;
}

template <typename T>
std::vector<T> DownloadRaw(TestDevice& dev, const Buffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(dev.backend->CopyToHost(v.data(), b.data(), n * sizeof(T)).ok());
  return v;
}

// The expert chain over `rows` (device, [offsets.back(), D]); returns y [offsets.back(), D].
absl::StatusOr<std::unique_ptr<Buffer>> Experts(TestDevice& dev, DType dtype, const Buffer& rows,
                                                const std::vector<int64_t>& offsets,
                                                const Buffer& w13, const Buffer& w2t) {
  const int64_t m = offsets.back(), sz = DTypeSize(dtype);
  MOE_ASSIGN_OR_RETURN(auto gate_up, dev.allocator->Allocate(m * 2 * kInter * sz));
  MOE_ASSIGN_OR_RETURN(auto act, dev.allocator->Allocate(m * kInter * sz));
  MOE_ASSIGN_OR_RETURN(auto y, dev.allocator->Allocate(m * kHidden * sz));
  GroupedGemmArgs g1;
  g1.gemm.n = 2 * kInter;
  g1.gemm.k = kHidden;
  g1.gemm.a = rows.data();
  g1.gemm.a_dtype = g1.gemm.b_dtype = g1.gemm.c_dtype = dtype;
  g1.gemm.lda = kHidden;
  g1.gemm.b = w13.data();
  g1.gemm.ldb = 2 * kInter;
  g1.gemm.c = gate_up->data();
  g1.gemm.ldc = 2 * kInter;
  g1.num_groups = kExperts;
  g1.offsets = offsets.data();
  g1.stride_b = kHidden * 2 * kInter;
  MOE_RETURN_IF_ERROR(dev.backend->GroupedGemm(g1));
  SwiGluArgs s;
  s.rows = m;
  s.inter = kInter;
  s.dtype = dtype;
  s.gate_up = gate_up->data();
  s.gate_up_ld = 2 * kInter;
  s.out = act->data();
  s.out_ld = kInter;
  MOE_RETURN_IF_ERROR(dev.backend->SwiGlu(s));
  GroupedGemmArgs g2 = g1;
  g2.gemm.n = kHidden;
  g2.gemm.k = kInter;
  g2.gemm.a = act->data();
  g2.gemm.lda = kInter;
  g2.gemm.b = w2t.data();
  g2.gemm.ldb = kHidden;
  g2.gemm.c = y->data();
  g2.gemm.ldc = kHidden;
  g2.stride_b = kInter * kHidden;
  MOE_RETURN_IF_ERROR(dev.backend->GroupedGemm(g2));
  return y;
}

// The combine of y [T, D] (dispatch order) into out [T, D]; returns out's bytes.
absl::StatusOr<std::vector<uint8_t>> Combine(TestDevice& dev, DType dtype, const Buffer& y,
                                             const Buffer& slot_to_row, const Buffer& ids,
                                             const Buffer& weights, int64_t tokens) {
  const int64_t sz = DTypeSize(dtype);
  MOE_ASSIGN_OR_RETURN(auto out, dev.allocator->Allocate(tokens * kHidden * sz));
  CombineArgs c;
  c.tokens = tokens;
  c.top_k = 1;
  c.cols = kHidden;
  c.dtype = dtype;
  c.expert_out = y.data();
  c.expert_out_ld = kHidden;
  c.slot_to_row = static_cast<const int32_t*>(slot_to_row.data());
  c.ids = static_cast<const int32_t*>(ids.data());
  c.weights = static_cast<const float*>(weights.data());
  c.out = out->data();
  c.out_ld = kHidden;
  MOE_RETURN_IF_ERROR(dev.backend->Combine(c));
  std::vector<uint8_t> bytes(tokens * kHidden * sz);
  MOE_RETURN_IF_ERROR(dev.backend->CopyToHost(bytes.data(), out->data(), bytes.size()));
  return bytes;
}

TEST(MoePaddingTest, PadRowsAreInert) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  auto dev_or = MakeTestDevice();
  if (!dev_or.ok()) GTEST_SKIP() << "no test backend: " << dev_or.status();
  TestDevice& dev = *dev_or;
  const std::vector<int64_t> counts = {0, 3, 5, 1, 0, 7};
  std::vector<int32_t> ids;
  for (int64_t e = 0; e < kExperts; ++e) ids.insert(ids.end(), counts[e], e);
  std::shuffle(ids.begin(), ids.end(), rng);
  const auto tokens = static_cast<int64_t>(ids.size());  // K = 1: one slot per token

  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const int64_t sz = DTypeSize(dtype);
    auto x = Upload(dev, RoundTo(RandomUniform(tokens * kHidden, rng), dtype), dtype,
                    Shape({tokens, kHidden}));
    auto w13 =
        Upload(dev, RoundTo(RandomUniform(kExperts * kHidden * 2 * kInter, rng, -0.3, 0.3), dtype),
               dtype, Shape({kExperts * kHidden * 2 * kInter}));
    auto w2t =
        Upload(dev, RoundTo(RandomUniform(kExperts * kInter * kHidden, rng, -0.3, 0.3), dtype),
               dtype, Shape({kExperts * kInter * kHidden}));
    std::vector<float> weights(tokens);
    for (float& v : weights) v = static_cast<float>(RandomUniform(1, rng, 0.1, 1.0)[0]);
    auto ids_dev = UploadRaw(dev, ids);
    auto weights_dev = UploadRaw(dev, weights);
    auto counts_dev = UploadRaw(dev, counts);
    auto sorted = dev.allocator->Allocate(tokens * 4);
    auto slot_to_row = dev.allocator->Allocate(tokens * 4);
    auto rows = dev.allocator->Allocate(tokens * kHidden * sz);
    ASSERT_TRUE(x.ok() && w13.ok() && w2t.ok() && ids_dev.ok() && weights_dev.ok() &&
                counts_dev.ok() && sorted.ok() && slot_to_row.ok() && rows.ok());

    ExpertOrderArgs order;
    order.n = tokens;
    order.ids = static_cast<const int32_t*>((*ids_dev)->data());
    order.num_experts = kExperts;
    order.counts = static_cast<const int64_t*>((*counts_dev)->data());
    order.sorted_slots = static_cast<int32_t*>((*sorted)->data());
    order.slot_to_row = static_cast<int32_t*>((*slot_to_row)->data());
    ASSERT_TRUE(dev.backend->ExpertOrder(order).ok());
    GatherRowsArgs gather;
    gather.rows = tokens;
    gather.cols = kHidden;
    gather.dtype = dtype;
    gather.src = x->tensor.data();
    gather.src_ld = kHidden;
    gather.src_rows = tokens;
    gather.index = order.sorted_slots;
    gather.dst = (*rows)->data();
    gather.dst_ld = kHidden;
    ASSERT_TRUE(dev.backend->GatherRows(gather).ok());

    std::vector<int64_t> offsets = {0}, padded_offsets = {0};
    for (int64_t c : counts) {
      offsets.push_back(offsets.back() + c);
      const int64_t padded = (std::max(c, kAlign) + kAlign - 1) / kAlign * kAlign;
      padded_offsets.push_back(padded_offsets.back() + padded);
    }
    auto plain_y = Experts(dev, dtype, **rows, offsets, *w13->buffer, *w2t->buffer);
    ASSERT_TRUE(plain_y.ok()) << plain_y.status();
    auto plain = Combine(dev, dtype, **plain_y, **slot_to_row, **ids_dev, **weights_dev, tokens);
    ASSERT_TRUE(plain.ok()) << plain.status();

    // Padded copy: expert e's real rows at padded_offsets[e], NaN in every pad row.
    const std::vector<uint8_t> real = DownloadRaw<uint8_t>(dev, **rows, tokens * kHidden * sz);
    const std::vector<uint8_t> nan_row = Encode(std::vector<double>(kHidden, std::nan("")), dtype);
    const int64_t row_bytes = kHidden * sz;
    std::vector<uint8_t> padded(padded_offsets.back() * row_bytes);
    for (int64_t r = 0; r < padded_offsets.back(); ++r) {
      std::memcpy(padded.data() + r * row_bytes, nan_row.data(), row_bytes);
    }
    std::vector<int32_t> padded_row_of(tokens);  // real dispatch row -> padded row
    for (int64_t e = 0; e < kExperts; ++e) {
      std::memcpy(padded.data() + padded_offsets[e] * row_bytes,
                  real.data() + offsets[e] * row_bytes, counts[e] * row_bytes);
      for (int64_t p = 0; p < counts[e]; ++p) {
        padded_row_of[offsets[e] + p] = static_cast<int32_t>(padded_offsets[e] + p);
      }
    }
    auto padded_rows = UploadRaw(dev, padded);
    auto padded_index = UploadRaw(dev, padded_row_of);
    ASSERT_TRUE(padded_rows.ok() && padded_index.ok());
    auto padded_y = Experts(dev, dtype, **padded_rows, padded_offsets, *w13->buffer, *w2t->buffer);
    ASSERT_TRUE(padded_y.ok()) << padded_y.status();
    // Unpad (drop the pad rows' outputs, as torchtitan's unpermute did), then combine.
    auto unpadded_y = dev.allocator->Allocate(tokens * row_bytes);
    ASSERT_TRUE(unpadded_y.ok());
    GatherRowsArgs unpad;
    unpad.rows = tokens;
    unpad.cols = kHidden;
    unpad.dtype = dtype;
    unpad.src = (*padded_y)->data();
    unpad.src_ld = kHidden;
    unpad.src_rows = padded_offsets.back();
    unpad.index = static_cast<const int32_t*>((*padded_index)->data());
    unpad.dst = (*unpadded_y)->data();
    unpad.dst_ld = kHidden;
    ASSERT_TRUE(dev.backend->GatherRows(unpad).ok());
    EXPECT_EQ(DownloadRaw<uint8_t>(dev, **unpadded_y, tokens * row_bytes),
              DownloadRaw<uint8_t>(dev, **plain_y, tokens * row_bytes));
    auto padded_out =
        Combine(dev, dtype, **unpadded_y, **slot_to_row, **ids_dev, **weights_dev, tokens);
    ASSERT_TRUE(padded_out.ok()) << padded_out.status();
    EXPECT_EQ(*padded_out, *plain);
    for (double v : Decode(padded_out->data(), tokens * kHidden, dtype)) {
      ASSERT_TRUE(std::isfinite(v));
    }
  }
}

}  // namespace
}  // namespace moe::testing
