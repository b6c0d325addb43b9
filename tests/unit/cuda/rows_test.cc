// The CUDA Embedding, GatherRows and KvWrite against the CPU backend, bit for bit: random
// inputs, odd sizes, every dtype each op takes, leading dims past the row length (whose padding
// must stay untouched), unaligned pointers, GatherRows' divisor and slot scale, KvWrite's
// repeated slots (the last token wins) and token counts past one token per block. Index errors
// at the exact limits: the CPU backend's message, and every output left untouched.
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/rows.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
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
using ::moe::cuda::testing::Encode;
using ::moe::cuda::testing::ExpectSameBits;
using ::moe::cuda::testing::NoDeviceReason;
using ::moe::cuda::testing::RandomValues;
using ::moe::cuda::testing::SpecialValues;

constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

// Random bits with NaN payloads among them: copies must keep every bit.
Bytes RandomBits(int64_t bytes, std::mt19937_64& rng) {
  Bytes out(bytes);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

class CudaRowsTest : public ::moe::cuda::testing::CudaOpTest {
};

// ---- Embedding ---------------------------------------------------------------------------

class CudaEmbeddingTest : public CudaRowsTest {
 protected:
  void Check(const Bytes& table, int64_t vocab, int64_t cols, int64_t table_ld,
             const std::vector<int32_t>& ids, int64_t out_ld, DType dtype, size_t offset) {
    const int64_t tokens = static_cast<int64_t>(ids.size());
    SCOPED_TRACE(::testing::Message()
                 << "embedding tokens=" << tokens << " vocab=" << vocab << " cols=" << cols
                 << " table_ld=" << table_ld << " out_ld=" << out_ld
                 << " dtype=" << DTypeName(dtype) << " offset=" << offset);
    const Bytes init(tokens * out_ld * DTypeSize(dtype), 0x7b);
    Bytes want = init;
    EmbeddingArgs args;
    args.tokens = tokens;
    args.ids = ids.data();
    args.vocab = vocab;
    args.cols = cols;
    args.dtype = dtype;
    args.table = table.data();
    args.table_ld = table_ld;
    args.out = want.data();
    args.out_ld = out_ld;
    const absl::Status cpu = cpu_->Embedding(args);

    DeviceBuffer dtable(table, offset), dids(AsBytes(ids)), dout(init, offset),
        derr(Bytes(16, 0x5a));
    args.ids = dids.as<int32_t>();
    args.table = dtable.get();
    args.out = dout.get();
    const absl::Status launch = LaunchEmbedding(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    EXPECT_EQ(FinishEmbedding(args, derr.as<uint64_t>(), stream_), cpu);
    ExpectSameBits(dout.ToHost(), want, dtype);
    if (!cpu.ok()) ExpectSameBits(dout.ToHost(), init, dtype);
  }
};

TEST_F(CudaEmbeddingTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t tokens, vocab, cols, pad;
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Case c : {Case{1, 1, 1, 0}, Case{5, 3, 7, 1}, Case{17, 100, 64, 8},
                   Case{300, 1000, 2048, 0}, Case{70000, 50, 9, 3}, Case{33, 7, 4097, 5}}) {
      const int64_t ld = c.cols + c.pad;
      const Bytes table = RandomBits(c.vocab * ld * DTypeSize(dtype), rng);
      std::vector<int32_t> ids(c.tokens);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.vocab);
      Check(table, c.vocab, c.cols, ld, ids, ld + 2, dtype, 0);
      Check(table, c.vocab, c.cols, ld, ids, ld, dtype, DTypeSize(dtype));
    }
  }
}

TEST_F(CudaEmbeddingTest, BadIdsAreReportedAndNothingIsWritten) {
  std::mt19937_64 rng(3);
  const int64_t vocab = 10, cols = 24;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Bytes table = RandomBits(vocab * cols * DTypeSize(dtype), rng);
    for (const std::vector<int32_t>& ids :
         {std::vector<int32_t>{0, 9, 9, 0},  // limit - 1: fine
          std::vector<int32_t>{0, 10, 3, -1}, std::vector<int32_t>{-1, 2, 10, 0},
          std::vector<int32_t>{1, 2, 3, kInt32Min}, std::vector<int32_t>{kInt32Max, 0, 0, 0}}) {
      Check(table, vocab, cols, cols, ids, cols, dtype, 0);
    }
  }
}

// ---- GatherRows --------------------------------------------------------------------------

class CudaGatherRowsTest : public CudaRowsTest {
 protected:
  // src [src_rows, src_ld]; index [rows]; slot_scale (indexed by index values) or empty.
  void Check(const Bytes& src, int64_t src_rows, int64_t cols, int64_t src_ld,
             const std::vector<int32_t>& index, int64_t divisor, const std::vector<float>& scale,
             int64_t dst_ld, DType dtype, size_t offset, bool any_nan = false) {
    const int64_t rows = static_cast<int64_t>(index.size());
    SCOPED_TRACE(::testing::Message()
                 << "gather_rows rows=" << rows << " src_rows=" << src_rows << " cols=" << cols
                 << " src_ld=" << src_ld << " dst_ld=" << dst_ld << " divisor=" << divisor
                 << " scaled=" << !scale.empty() << " dtype=" << DTypeName(dtype)
                 << " offset=" << offset);
    const Bytes init(rows * dst_ld * DTypeSize(dtype), 0x7b);
    Bytes want = init;
    GatherRowsArgs args;
    args.rows = rows;
    args.cols = cols;
    args.dtype = dtype;
    args.src = src.data();
    args.src_ld = src_ld;
    args.src_rows = src_rows;
    args.index = index.data();
    args.index_divisor = divisor;
    args.slot_scale = scale.empty() ? nullptr : scale.data();
    args.dst = want.data();
    args.dst_ld = dst_ld;
    const absl::Status cpu = cpu_->GatherRows(args);

    DeviceBuffer dsrc(src, offset), dindex(AsBytes(index)), dscale(AsBytes(scale)),
        ddst(init, offset), derr(Bytes(16, 0x5a));
    args.src = dsrc.get();
    args.index = dindex.as<int32_t>();
    args.slot_scale = scale.empty() ? nullptr : dscale.as<float>();
    args.dst = ddst.get();
    const absl::Status launch = LaunchGatherRows(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    EXPECT_EQ(FinishGatherRows(args, derr.as<uint64_t>(), stream_), cpu);
    ExpectSameBits(ddst.ToHost(), want, dtype, any_nan);
    if (!cpu.ok()) ExpectSameBits(ddst.ToHost(), init, dtype);
  }
};

TEST_F(CudaGatherRowsTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t rows, src_rows, cols, pad, divisor;
  };
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (Case c :
         {Case{1, 1, 1, 0, 1}, Case{6, 3, 7, 1, 2}, Case{64, 8, 64, 8, 8},
          Case{257, 100, 2048, 0, 1}, Case{50000, 6250, 9, 3, 8}, Case{31, 31, 1001, 7, 1}}) {
      const int64_t ld = c.cols + c.pad;
      const int64_t slots = c.src_rows * c.divisor;
      std::vector<int32_t> index(c.rows);
      for (int32_t& i : index) i = static_cast<int32_t>(rng() % slots);
      std::vector<float> scale(slots);
      std::uniform_real_distribution<float> unit(-2.0f, 2.0f);
      for (float& s : scale) s = unit(rng);
      // Copies: any bits. Scaled: finite values (NaN encodings may differ, see rows.h).
      const Bytes bits = RandomBits(c.src_rows * ld * DTypeSize(dtype), rng);
      const Bytes values = RandomValues(c.src_rows * ld, dtype, rng, -100.0f, 100.0f);
      Check(bits, c.src_rows, c.cols, ld, index, c.divisor, {}, ld + 1, dtype, 0);
      Check(bits, c.src_rows, c.cols, ld, index, c.divisor, {}, ld, dtype, DTypeSize(dtype));
      Check(values, c.src_rows, c.cols, ld, index, c.divisor, scale, ld + 1, dtype, 0);
      Check(values, c.src_rows, c.cols, ld, index, c.divisor, scale, ld, dtype, DTypeSize(dtype));
    }
  }
}

TEST_F(CudaGatherRowsTest, ScaledSpecialValues) {
  const std::vector<float> s = SpecialValues();
  const int64_t n = static_cast<int64_t>(s.size());
  std::vector<float> src;
  for (int64_t r = 0; r < n; ++r) src.insert(src.end(), s.begin(), s.end());
  std::vector<int32_t> index(n);
  std::iota(index.begin(), index.end(), 0);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    Check(Encode(src, dtype), n, n, n, index, 1, s, n, dtype, 0, /*any_nan=*/true);
  }
}

TEST_F(CudaGatherRowsTest, BadIndicesAreReportedAndNothingIsWritten) {
  std::mt19937_64 rng(5);
  const int64_t src_rows = 4, cols = 16, divisor = 3;  // valid index values: [0, 12)
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Bytes src = RandomValues(src_rows * cols, dtype, rng, -1.0f, 1.0f);
    const std::vector<float> scale(64, 0.5f);
    for (const std::vector<int32_t>& index :
         {std::vector<int32_t>{0, 11, 5, 11}, std::vector<int32_t>{0, 12, 3, -1},
          std::vector<int32_t>{-1, 2, 12, 0}, std::vector<int32_t>{1, 2, 3, kInt32Min},
          std::vector<int32_t>{kInt32Max, 0, 0, 0}}) {
      Check(src, src_rows, cols, cols, index, divisor, {}, cols, dtype, 0);
      Check(src, src_rows, cols, cols, index, divisor, scale, cols, dtype, 0);
    }
  }
}

// ---- KvWrite -----------------------------------------------------------------------------

class CudaKvWriteTest : public CudaRowsTest {
 protected:
  struct Shape {
    int64_t kv_heads, head_dim, num_blocks, block_size, pad;
  };

  void Check(const Shape& s, const std::vector<int32_t>& slots, DType dtype, size_t offset,
             std::mt19937_64& rng) {
    const int64_t tokens = static_cast<int64_t>(slots.size());
    const int64_t row = s.kv_heads * s.head_dim;
    const int64_t ld = row + s.pad;
    const size_t elem = DTypeSize(dtype);
    SCOPED_TRACE(::testing::Message()
                 << "kv_write tokens=" << tokens << " kv_heads=" << s.kv_heads << " head_dim="
                 << s.head_dim << " num_blocks=" << s.num_blocks << " block_size=" << s.block_size
                 << " ld=" << ld << " dtype=" << DTypeName(dtype) << " offset=" << offset);
    const Bytes k = RandomBits(tokens * ld * elem, rng);
    const Bytes v = RandomBits(tokens * (ld + 1) * elem, rng);
    const Bytes k_init = RandomBits(s.num_blocks * s.block_size * row * elem, rng);
    const Bytes v_init = RandomBits(k_init.size(), rng);
    Bytes k_want = k_init, v_want = v_init;
    KvWriteArgs args;
    args.tokens = tokens;
    args.kv_heads = s.kv_heads;
    args.head_dim = s.head_dim;
    args.dtype = dtype;
    args.k = k.data();
    args.k_ld = ld;
    args.v = v.data();
    args.v_ld = ld + 1;
    args.slot_mapping = slots.data();
    args.num_blocks = s.num_blocks;
    args.block_size = s.block_size;
    args.k_cache = k_want.data();
    args.v_cache = v_want.data();
    const absl::Status cpu = cpu_->KvWrite(args);

    DeviceBuffer dk(k, offset), dv(v, offset), dslots(AsBytes(slots)), dkc(k_init, offset),
        dvc(v_init, offset), derr(Bytes(16, 0x5a));
    args.k = dk.get();
    args.v = dv.get();
    args.slot_mapping = dslots.as<int32_t>();
    args.k_cache = dkc.get();
    args.v_cache = dvc.get();
    const absl::Status launch = LaunchKvWrite(args, derr.as<uint64_t>(), stream_);
    ASSERT_TRUE(launch.ok()) << launch;
    EXPECT_EQ(FinishKvWrite(args, derr.as<uint64_t>(), stream_), cpu);
    ExpectSameBits(dkc.ToHost(), k_want, dtype);
    ExpectSameBits(dvc.ToHost(), v_want, dtype);
    if (!cpu.ok()) {
      ExpectSameBits(dkc.ToHost(), k_init, dtype);
      ExpectSameBits(dvc.ToHost(), v_init, dtype);
    }
  }
};

TEST_F(CudaKvWriteTest, DistinctSlotsMatchCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const Shape shapes[] = {{1, 1, 1, 1, 0},     {2, 7, 3, 5, 1},     {8, 128, 40, 16, 0},
                          {1, 576, 20, 64, 8}, {4, 64, 300, 16, 0}, {3, 33, 70, 32, 2}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : shapes) {
      const int64_t num_slots = s.num_blocks * s.block_size;
      std::vector<int32_t> all(num_slots);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      // Up to 4800 tokens: past 1024, blocks take several tokens each.
      for (int64_t tokens : {int64_t{1}, int64_t{5}, std::min<int64_t>(num_slots, 4800)}) {
        if (tokens > num_slots) continue;
        const std::vector<int32_t> slots(all.begin(), all.begin() + tokens);
        Check(s, slots, dtype, 0, rng);
        Check(s, slots, dtype, DTypeSize(dtype), rng);
      }
    }
  }
}

TEST_F(CudaKvWriteTest, RepeatedSlotsKeepTheLastToken) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const Shape s{2, 64, 8, 16, 4};  // 128 slots
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Check(s, {3, 3, 3, 3}, dtype, 0, rng);
    Check(s, {5, 7, 5, 9, 7, 5}, dtype, 0, rng);
    // Many tokens on few slots, inside and across the blocks' token groups.
    for (int64_t tokens : {100, 3000, 5000}) {
      std::vector<int32_t> slots(tokens);
      for (int32_t& slot : slots) slot = static_cast<int32_t>(rng() % 37);
      Check(s, slots, dtype, 0, rng);
    }
  }
}

TEST_F(CudaKvWriteTest, BadSlotsAreReportedAndNothingIsWritten) {
  std::mt19937_64 rng(9);
  const Shape s{2, 8, 3, 4, 0};  // slots [0, 12)
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const std::vector<int32_t>& slots :
         {std::vector<int32_t>{0, 11, 5, 6}, std::vector<int32_t>{0, 12, 3, -1},
          std::vector<int32_t>{-1, 2, 12, 0}, std::vector<int32_t>{1, 2, 3, kInt32Min},
          std::vector<int32_t>{kInt32Max, 0, 1, 2}}) {
      Check(s, slots, dtype, 0, rng);
    }
  }
}

// Run everywhere: the messages need no device.
TEST(CudaRowsDataErrorTest, MessagesNameTheEntryValueAndLimit) {
  const uint64_t none[2] = {~uint64_t{0}, 0};
  const uint64_t bad[2] = {2, static_cast<uint64_t>(int64_t{-7})};
  EmbeddingArgs e;
  e.vocab = 10;
  EXPECT_TRUE(EmbeddingDataError(e, none).ok());
  EXPECT_EQ(EmbeddingDataError(e, bad),
            absl::InvalidArgumentError("embedding: ids[2]=-7 is outside [0, vocab=10)"));
  GatherRowsArgs g;
  g.index_divisor = 4;
  g.src_rows = 3;
  EXPECT_TRUE(GatherRowsDataError(g, none).ok());
  EXPECT_EQ(GatherRowsDataError(g, bad),
            absl::InvalidArgumentError("gather_rows: index[2]=-7 / index_divisor=4 is outside "
                                       "the source rows [0, src_rows=3)"));
  KvWriteArgs k;
  k.num_blocks = 3;
  k.block_size = 16;
  EXPECT_TRUE(KvWriteDataError(k, none).ok());
  EXPECT_EQ(KvWriteDataError(k, bad),
            absl::InvalidArgumentError(
                "kv_write: slot_mapping[2]=-7 is outside [0, num_blocks * block_size=48)"));
}

}  // namespace
}  // namespace moe::cuda
