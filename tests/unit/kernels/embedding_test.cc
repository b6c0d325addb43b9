// Embedding: exact row copies by id; a bad id names the position, id and vocab and writes
// nothing. Validation at the exact limits.
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/test_util.h"

namespace moe {
namespace {

using ::moe::testing::Decode;
using ::moe::testing::Encode;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::moe::testing::TestSeed;

EmbeddingArgs MakeArgs(DType dtype, int64_t tokens, const int32_t* ids, int64_t vocab, int64_t cols,
                       const void* table, int64_t table_ld, void* out, int64_t out_ld) {
  EmbeddingArgs a;
  a.tokens = tokens;
  a.ids = ids;
  a.vocab = vocab;
  a.cols = cols;
  a.dtype = dtype;
  a.table = table;
  a.table_ld = table_ld;
  a.out = out;
  a.out_ld = out_ld;
  return a;
}

class EmbeddingTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(EmbeddingTest, CopiesRows) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [tokens, vocab, cols, pad] :
         std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{1, 1, 1, 0},
                                                                     {7, 13, 5, 3},
                                                                     {64, 256, 64, 0},
                                                                     {301, 1000, 4096, 0},
                                                                     {33, 77, 999, 1}}) {
      SCOPED_TRACE(
          absl::StrCat(DTypeName(dtype), " tokens=", tokens, " vocab=", vocab, " cols=", cols));
      const int64_t table_ld = cols + pad, out_ld = cols + 2 * pad;
      const std::vector<double> table = RoundTo(RandomUniform(vocab * table_ld, rng), dtype);
      const std::vector<uint8_t> raw = Encode(table, dtype);
      std::vector<int32_t> ids(tokens);
      std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
      for (int32_t& id : ids) id = pick(rng);
      ids[0] = static_cast<int32_t>(vocab - 1);
      std::vector<std::vector<uint8_t>> outs;
      for (Backend* b : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
        outs.push_back(Encode(std::vector<double>(tokens * out_ld, 77.0), dtype));
        ASSERT_TRUE(b->Embedding(MakeArgs(dtype, tokens, ids.data(), vocab, cols, raw.data(),
                                          table_ld, outs.back().data(), out_ld))
                        .ok());
      }
      ASSERT_EQ(outs[0], outs[1]);
      const std::vector<double> got = Decode(outs[0].data(), tokens * out_ld, dtype);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t j = 0; j < out_ld; ++j) {
          ASSERT_EQ(got[t * out_ld + j], j < cols ? table[ids[t] * table_ld + j] : 77.0)
              << "t=" << t << " j=" << j;
        }
      }
    }
  }
}

TEST_F(EmbeddingTest, IdAtTheLimits) {
  const std::vector<float> table(4 * 3, 1.0f);
  std::vector<float> out(2 * 3, 5.0f);
  for (int32_t id : {0, 3}) {
    const std::vector<int32_t> ids = {1, id};
    EXPECT_TRUE(
        one_.Embedding(MakeArgs(DType::kF32, 2, ids.data(), 4, 3, table.data(), 3, out.data(), 3))
            .ok());
  }
  out.assign(6, 5.0f);
  for (auto [id, msg] : std::vector<std::pair<int32_t, std::string>>{
           {4, "embedding: ids[1]=4 is outside [0, vocab=4)"},
           {-1, "embedding: ids[1]=-1 is outside [0, vocab=4)"}}) {
    const std::vector<int32_t> ids = {1, id};
    const absl::Status s =
        two_.Embedding(MakeArgs(DType::kF32, 2, ids.data(), 4, 3, table.data(), 3, out.data(), 3));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), msg);
    for (float v : out) EXPECT_EQ(v, 5.0f) << "written before the check";
  }
}

TEST_F(EmbeddingTest, ValidationAtTheLimits) {
  const std::vector<float> table(4 * 3, 1.0f);
  std::vector<float> out(2 * 3);
  const std::vector<int32_t> ids = {0, 1};
  auto args = [&] {
    return MakeArgs(DType::kF32, 2, ids.data(), 4, 3, table.data(), 3, out.data(), 3);
  };
  EXPECT_TRUE(one_.Embedding(args()).ok());
  EmbeddingArgs a = args();
  a.tokens = -1;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: tokens=-1 is negative");
  a = args();
  a.vocab = 0;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: vocab=0 must be positive");
  a = args();
  a.cols = -1;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: cols=-1 is negative");
  a = args();
  a.table_ld = 2;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: table_ld=2 is less than the row length 3");
  a = args();
  a.out_ld = 2;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: out_ld=2 is less than the row length 3");
  a = args();
  a.dtype = DType::kI32;
  EXPECT_EQ(one_.Embedding(a).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: dtype=i32 (supported: f32, bf16)");
  a = args();
  a.ids = nullptr;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: ids is null");
  a.tokens = 0;
  EXPECT_TRUE(one_.Embedding(a).ok());
  a = args();
  a.table = nullptr;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: table is null");
  a = args();
  a.out = nullptr;
  EXPECT_EQ(one_.Embedding(a).message(), "embedding: out is null");
}

}  // namespace
}  // namespace moe
