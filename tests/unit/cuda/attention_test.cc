// The CUDA Attention against the CPU backend, bit for bit: random shapes (head_dim 8..128, odd
// ones included; heads / kv_heads 1..8; block sizes 1, 4, 16), sliding windows, batches mixing
// prefill chunks, whole prompts, decode tokens and scattered positions of several sequences,
// contexts up to ~600, leading dims past the row (whose padding must stay untouched), block
// table entries that no query reads set out of range, large scores (exp at its clamps), and
// split-KV partials that hold one (token, head), 7 of them, or all (as many launches as that
// takes, the same bits), each with a block per query head and a block per kv head's heads. Data errors at the exact limits: the CPU backend's message, and the
// output left untouched.
// Without a CUDA device the GPU cases are skipped with the reason.
#include "kernels/cuda/attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
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
using ::moe::cuda::testing::ExpectSameBits;
using ::moe::cuda::testing::NoDeviceReason;
using ::moe::cuda::testing::RandomValues;

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

int64_t FirstVisible(int64_t p, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
}

// One attention call's host data; the pointers of args are set by Run.
struct Batch {
  int64_t heads = 1, kv_heads = 1, head_dim = 8, block_size = 1, window = 0;
  int64_t num_blocks = 1, num_seqs = 1, max_blocks_per_seq = 1, q_pad = 0, out_pad = 0;
  float scale = 1.0f;
  DType dtype = DType::kF32;
  std::vector<int32_t> block_tables, seq_ids, positions;
  Bytes q, k_cache, v_cache;

  int64_t tokens() const { return static_cast<int64_t>(seq_ids.size()); }
  int64_t q_ld() const { return heads * head_dim + q_pad; }
  int64_t out_ld() const { return heads * head_dim + out_pad; }
};

struct Shape {
  int64_t heads, kv_heads, head_dim, block_size, window, num_seqs, max_context;
};

// Sequences of random lengths up to max_context, each queried as a whole prompt, a prefill
// chunk (its last positions), a decode token or a few scattered positions; the sequences'
// runs of tokens in random order. Block ids are a random permutation; block table entries that
// no query reads (past a sequence's length, or before every window of its queries) are set out
// of range.
Batch MakeBatch(const Shape& s, DType dtype, float lo, float hi, float scale,
                std::mt19937_64& rng) {
  Batch b;
  b.heads = s.heads;
  b.kv_heads = s.kv_heads;
  b.head_dim = s.head_dim;
  b.block_size = s.block_size;
  b.window = s.window;
  b.num_seqs = s.num_seqs;
  b.scale = scale;
  b.dtype = dtype;
  b.q_pad = static_cast<int64_t>(rng() % 3);
  b.out_pad = static_cast<int64_t>(rng() % 3);
  std::vector<int64_t> length(s.num_seqs);
  std::vector<std::vector<int32_t>> runs;
  std::vector<int32_t> run_seq;
  for (int64_t q = 0; q < s.num_seqs; ++q) {
    length[q] = 1 + static_cast<int64_t>(rng() % s.max_context);
    const int64_t len = length[q];
    std::vector<int32_t> pos;
    switch (rng() % 4) {
      case 0:  // whole prompt
        for (int64_t p = 0; p < len; ++p) pos.push_back(static_cast<int32_t>(p));
        break;
      case 1: {  // prefill chunk
        const int64_t start = static_cast<int64_t>(rng() % len);
        for (int64_t p = start; p < len; ++p) pos.push_back(static_cast<int32_t>(p));
        break;
      }
      case 2:  // decode
        pos.push_back(static_cast<int32_t>(len - 1));
        break;
      default:  // scattered
        for (int i = 0; i < 4; ++i) pos.push_back(static_cast<int32_t>(rng() % len));
        break;
    }
    // Long runs split in two, so that other sequences' tokens come between.
    const size_t half = pos.size() > 8 ? pos.size() / 2 : pos.size();
    runs.emplace_back(pos.begin(), pos.begin() + half);
    run_seq.push_back(static_cast<int32_t>(q));
    if (half < pos.size()) {
      runs.emplace_back(pos.begin() + half, pos.end());
      run_seq.push_back(static_cast<int32_t>(q));
    }
  }
  std::vector<size_t> order(runs.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int64_t> min_lo(s.num_seqs, std::numeric_limits<int64_t>::max());
  for (size_t r : order) {
    for (int32_t p : runs[r]) {
      b.seq_ids.push_back(run_seq[r]);
      b.positions.push_back(p);
      min_lo[run_seq[r]] = std::min(min_lo[run_seq[r]], FirstVisible(p, s.window));
    }
  }
  int64_t total_blocks = 0;
  for (int64_t q = 0; q < s.num_seqs; ++q) {
    const int64_t blocks = (length[q] + s.block_size - 1) / s.block_size;
    b.max_blocks_per_seq = std::max(b.max_blocks_per_seq, blocks + 1);
    total_blocks += blocks;
  }
  b.num_blocks = total_blocks + 3;
  std::vector<int32_t> ids(b.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.block_tables.assign(s.num_seqs * b.max_blocks_per_seq, -1);
  int64_t next = 0;
  for (int64_t q = 0; q < s.num_seqs; ++q) {
    const int64_t blocks = (length[q] + s.block_size - 1) / s.block_size;
    for (int64_t i = 0; i < b.max_blocks_per_seq; ++i) {
      int32_t& entry = b.block_tables[q * b.max_blocks_per_seq + i];
      if (i >= blocks) {
        entry = i % 2 == 0 ? kInt32Max : -5;
      } else {
        entry = ids[next++];
        if (i < min_lo[q] / s.block_size) entry = static_cast<int32_t>(b.num_blocks + i);
      }
    }
  }
  const int64_t cache = b.num_blocks * s.block_size * s.kv_heads * s.head_dim;
  b.k_cache = RandomValues(cache, dtype, rng, lo, hi);
  b.v_cache = RandomValues(cache, dtype, rng, -1.0f, 1.0f);
  b.q = RandomValues(b.tokens() * b.q_ld(), dtype, rng, lo, hi);
  return b;
}

class CudaAttentionTest : public ::moe::cuda::testing::CudaOpTest {
 protected:

  // The CPU backend's and this launcher's results must agree bit for bit, Status included; on
  // an error the output stays as it was. partial_items: the (token, head) pairs the partials
  // hold (0: all).
  void Check(const Batch& b, int64_t partial_items = 0) {
    SCOPED_TRACE(::testing::Message()
                 << "attention tokens=" << b.tokens() << " heads=" << b.heads << " kv_heads="
                 << b.kv_heads << " head_dim=" << b.head_dim << " block_size=" << b.block_size
                 << " window=" << b.window << " num_seqs=" << b.num_seqs
                 << " max_blocks_per_seq=" << b.max_blocks_per_seq << " scale=" << b.scale
                 << " dtype=" << DTypeName(b.dtype) << " partial_items=" << partial_items);
    const Bytes init(b.tokens() * b.out_ld() * DTypeSize(b.dtype), 0x7b);
    Bytes want = init;
    AttentionArgs args;
    args.tokens = b.tokens();
    args.heads = b.heads;
    args.kv_heads = b.kv_heads;
    args.head_dim = b.head_dim;
    args.dtype = b.dtype;
    args.q = b.q.data();
    args.q_ld = b.q_ld();
    args.k_cache = b.k_cache.data();
    args.v_cache = b.v_cache.data();
    args.num_blocks = b.num_blocks;
    args.block_size = b.block_size;
    args.num_seqs = b.num_seqs;
    args.max_blocks_per_seq = b.max_blocks_per_seq;
    args.block_tables = b.block_tables.data();
    args.seq_ids = b.seq_ids.data();
    args.positions = b.positions.data();
    args.sliding_window = b.window;
    args.scale = b.scale;
    args.out = want.data();
    args.out_ld = b.out_ld();
    const absl::Status cpu = cpu_->Attention(args);

    DeviceBuffer dq(b.q), dk(b.k_cache), dv(b.v_cache), dtables(AsBytes(b.block_tables)),
        dseqs(AsBytes(b.seq_ids)), dpos(AsBytes(b.positions));
    args.q = dq.get();
    args.k_cache = dk.get();
    args.v_cache = dv.get();
    args.block_tables = dtables.as<int32_t>();
    args.seq_ids = dseqs.as<int32_t>();
    args.positions = dpos.as<int32_t>();
    // Both kernels; the grouped one needs room for a kv head's heads in the partials.
    for (AttentionKernel kernel : {AttentionKernel::kPerHead, AttentionKernel::kPerKvHead}) {
      SCOPED_TRACE(kernel == AttentionKernel::kPerHead ? "per head" : "per kv head");
      DeviceBuffer dout(init), derr(Bytes(16, 0x5a));
      args.out = dout.get();
      const int64_t item_floats = AttentionPartitionSlots(args) * (b.head_dim + 2);
      const int64_t items = partial_items > 0 ? partial_items : b.tokens() * b.heads;
      const int64_t partial_floats =
          item_floats * (kernel == AttentionKernel::kPerKvHead ? std::max<int64_t>(items, 8)
                                                               : items);
      DeviceBuffer dpartials(Bytes(partial_floats * sizeof(float), 0x5a));
      const absl::Status launch = LaunchAttention(args, dpartials.as<float>(), partial_floats,
                                                  derr.as<uint64_t>(), stream_, kernel);
      ASSERT_TRUE(launch.ok()) << launch;
      EXPECT_EQ(FinishAttention(args, derr.as<uint64_t>(), stream_), cpu);
      ExpectSameBits(dout.ToHost(), want, b.dtype);
      if (!cpu.ok()) ExpectSameBits(dout.ToHost(), init, b.dtype);
    }
  }

};

const Shape kShapes[] = {
    // heads, kv_heads, head_dim, block_size, window, num_seqs, max_context
    {1, 1, 8, 1, 0, 1, 5},        {4, 2, 20, 4, 0, 3, 200},    {8, 8, 64, 16, 0, 2, 600},
    {8, 1, 128, 16, 0, 4, 600},   {6, 3, 33, 4, 17, 3, 300},   {2, 2, 96, 1, 1, 2, 50},
    {8, 2, 128, 16, 100, 3, 600}, {3, 1, 8, 16, 0, 5, 40},     {5, 5, 100, 4, 250, 2, 600},
    {7, 7, 12, 1, 3, 3, 90},      {4, 4, 17, 16, 600, 2, 600}, {2, 1, 128, 4, 64, 6, 150},
    // Long contexts (many partitions), MLA's head_dim 192, a window that starts mid-partition.
    {4, 1, 128, 16, 0, 2, 3000},  {2, 2, 192, 16, 0, 2, 1000}, {3, 1, 36, 8, 200, 2, 900},
    // More query heads per kv head than a grouped block takes (12 = 8 + 4; 16 = 8 + 8).
    {24, 2, 64, 16, 0, 3, 400},   {16, 1, 40, 8, 0, 2, 300},
};

TEST_F(CudaAttentionTest, RandomMatchesCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : kShapes) {
      const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
      Check(MakeBatch(s, dtype, -1.0f, 1.0f, scale, rng));
    }
  }
}

// Scores far apart: most weights underflow (exp at its -86.5 clamp), a few dominate.
TEST_F(CudaAttentionTest, LargeScoresMatchCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : {Shape{4, 2, 64, 16, 0, 3, 400}, Shape{3, 3, 20, 4, 50, 2, 300}}) {
      Check(MakeBatch(s, dtype, -4.0f, 4.0f, 1.0f, rng));
    }
  }
}

TEST_F(CudaAttentionTest, SmallPartialsMatchCpu) {
  const uint64_t seed = moe::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "MOE_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : {Shape{4, 2, 20, 4, 0, 3, 300}, Shape{8, 2, 128, 16, 100, 3, 600},
                           Shape{2, 2, 9, 1, 0, 2, 70}}) {
      const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
      const Batch b = MakeBatch(s, dtype, -1.0f, 1.0f, scale, rng);
      for (int64_t items : {1, 7}) Check(b, items);
    }
  }
}

// Run everywhere: refused before any CUDA call.
TEST(CudaAttentionPartialsTest, TooFewPartialsAreInvalid) {
  AttentionArgs args;
  args.head_dim = 128;
  args.block_size = 16;
  args.max_blocks_per_seq = 8;  // 128 positions: 2 partitions
  uint64_t words[2] = {0, 0};
  EXPECT_EQ(AttentionPartitionSlots(args), 2);
  EXPECT_EQ(LaunchAttention(args, nullptr, 0, words, nullptr),
            absl::InvalidArgumentError("attention (cuda): the partials hold 0 floats; one (token, "
                                       "head) of 2 partitions of head_dim=128 needs 260"));
  args.sliding_window = 64;  // 64 positions at any offset: 2 partitions still
  EXPECT_EQ(AttentionPartitionSlots(args), 2);
  args.sliding_window = 1;
  EXPECT_EQ(AttentionPartitionSlots(args), 1);
  EXPECT_EQ(LaunchAttention(args, nullptr, 0, nullptr, nullptr),
            absl::InvalidArgumentError("attention (cuda): error is null"));
}

// Two sequences of 3 blocks of 4 positions (max position 11), blocks [0, 6).
TEST_F(CudaAttentionTest, DataErrorsAreReportedAndNothingIsWritten) {
  std::mt19937_64 rng(11);
  Batch base;
  base.heads = 4;
  base.kv_heads = 2;
  base.head_dim = 16;
  base.block_size = 4;
  base.num_blocks = 6;
  base.num_seqs = 2;
  base.max_blocks_per_seq = 3;
  base.scale = 0.25f;
  base.block_tables = {0, 1, 2, 3, 4, 5};
  struct Case {
    std::vector<int32_t> seq_ids, positions;
    int64_t table_index;  // -1: none changed
    int32_t table_value;
    int64_t window;
  };
  const Case cases[] = {
      {{0, 1}, {11, 11}, -1, 0, 0},         // limits - 1: fine
      {{0, 1}, {11, 11}, 5, 5, 0},          // num_blocks - 1: fine
      {{0, 2}, {0, 0}, -1, 0, 0},           // seq_ids[1]=num_seqs
      {{-1, 0}, {0, 0}, -1, 0, 0},          // seq_ids[0]=-1
      {{1, 0}, {0, 12}, -1, 0, 0},          // positions[1]=12
      {{0, 1}, {-1, 3}, -1, 0, 0},          // positions[0]=-1
      {{0, 1}, {3, 11}, 5, 6, 0},           // block_tables[1, 2]=num_blocks
      {{0, 1}, {3, 11}, 4, -1, 0},          // block_tables[1, 1]=-1
      {{1, 2}, {11, 0}, 5, 6, 0},           // token 0's block error before token 1's seq error
      {{0, 0}, {11, 11}, 0, kInt32Max, 8},  // block 0 not read with window 8 (lo = 4)
      {{0, 0}, {11, 11}, 0, kInt32Max, 9},  // ... read with window 9 (lo = 3)
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Case& c : cases) {
      Batch b = base;
      b.dtype = dtype;
      b.seq_ids = c.seq_ids;
      b.positions = c.positions;
      b.window = c.window;
      if (c.table_index >= 0) b.block_tables[c.table_index] = c.table_value;
      const int64_t cache = b.num_blocks * b.block_size * b.kv_heads * b.head_dim;
      b.k_cache = RandomValues(cache, dtype, rng, -1.0f, 1.0f);
      b.v_cache = RandomValues(cache, dtype, rng, -1.0f, 1.0f);
      b.q = RandomValues(b.tokens() * b.q_ld(), dtype, rng, -1.0f, 1.0f);
      Check(b);
    }
  }
  // Two bad entries of one token: the first block is reported.
  Batch b = base;
  b.seq_ids = {1};
  b.positions = {11};
  b.block_tables = {0, 1, 2, 3, -2, 9};
  const int64_t cache = b.num_blocks * b.block_size * b.kv_heads * b.head_dim;
  b.k_cache = RandomValues(cache, b.dtype, rng, -1.0f, 1.0f);
  b.v_cache = RandomValues(cache, b.dtype, rng, -1.0f, 1.0f);
  b.q = RandomValues(b.q_ld(), b.dtype, rng, -1.0f, 1.0f);
  Check(b);
}

// Run everywhere: the messages need no device.
TEST(CudaAttentionDataErrorTest, MessagesNameTheEntryValueAndLimit) {
  AttentionArgs a;
  a.num_seqs = 2;
  a.max_blocks_per_seq = 3;  // keys t * 5 + c
  a.block_size = 4;
  a.num_blocks = 6;
  const uint64_t none[2] = {~uint64_t{0}, 0};
  EXPECT_TRUE(AttentionDataError(a, none).ok());
  const uint64_t seq[2] = {5, static_cast<uint64_t>(int64_t{-7})};
  EXPECT_EQ(AttentionDataError(a, seq),
            absl::InvalidArgumentError("attention: seq_ids[1]=-7 is outside [0, num_seqs=2)"));
  const uint64_t pos[2] = {11, 12};
  EXPECT_EQ(AttentionDataError(a, pos),
            absl::InvalidArgumentError("attention: positions[2]=12 is outside [0, "
                                       "max_blocks_per_seq * block_size=12)"));
  const uint64_t block[2] = {4, (uint64_t{1} << 32) | uint32_t{0xfffffffeu}};
  EXPECT_EQ(
      AttentionDataError(a, block),
      absl::InvalidArgumentError("attention: block_tables[1, 2]=-2 is outside [0, num_blocks=6)"));
}

}  // namespace
}  // namespace moe::cuda
