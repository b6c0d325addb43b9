// Paged GQA attention and KvWrite against a float64 attention over contiguous K/V: ragged
// batches mixing prefill and decode, shuffled block tables, GQA ratios, sliding windows, f32
// and bf16; bit identity across thread counts and with each sequence run alone. Validation at
// the exact limits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
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
using ::moe::testing::MaxRelError;
using ::moe::testing::OpTol;
using ::moe::testing::RandomUniform;
using ::moe::testing::RoundTo;
using ::moe::testing::TestSeed;

struct Shape {
  DType dtype;
  int64_t heads, kv_heads, head_dim, block_size, window;
  // Per sequence: cached length after this step and the first position queried in it
  // (0: prefill of everything, length - 1: decode).
  std::vector<int64_t> lengths, first_query;
};

std::string Name(const Shape& s) {
  std::string seqs;
  for (size_t i = 0; i < s.lengths.size(); ++i) {
    absl::StrAppend(&seqs, " [", s.first_query[i], ",", s.lengths[i], ")");
  }
  return absl::StrCat(DTypeName(s.dtype), " heads=", s.heads, "/", s.kv_heads,
                      " head_dim=", s.head_dim, " block_size=", s.block_size, " window=", s.window,
                      seqs);
}

// A batch laid out in a paged cache, with its inputs and the float64 reference output.
struct Batch {
  int64_t tokens = 0, num_blocks = 0, max_blocks = 0, row = 0, q_ld = 0, out_ld = 0;
  std::vector<int32_t> block_tables, seq_ids, positions;
  std::vector<uint8_t> q, k_cache, v_cache;
  std::vector<double> want;  // [tokens, row]
};

Batch MakeBatch(Backend& backend, const Shape& s, std::mt19937_64& rng) {
  Batch b;
  const int64_t seqs = s.lengths.size();
  const int64_t kv_row = s.kv_heads * s.head_dim;
  b.row = s.heads * s.head_dim;
  b.q_ld = b.row + 3;
  b.out_ld = b.row + 5;
  for (int64_t len : s.lengths) {
    b.max_blocks = std::max(b.max_blocks, (len + s.block_size - 1) / s.block_size);
  }
  b.max_blocks += 1;  // an unused entry per row, left at -1: never read
  b.num_blocks = seqs * b.max_blocks + 2;
  std::vector<int32_t> ids(b.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.block_tables.assign(seqs * b.max_blocks, -1);
  int64_t next = 0;
  for (int64_t i = 0; i < seqs; ++i) {
    for (int64_t j = 0; j * s.block_size < s.lengths[i]; ++j) {
      b.block_tables[i * b.max_blocks + j] = ids[next++];
    }
  }
  // K, V per sequence, contiguous [len, kv_row]; written to the cache by KvWrite in one call of
  // all rows in a shuffled order, with row padding in the source.
  const int64_t cache_elems = b.num_blocks * s.block_size * kv_row;
  b.k_cache = Encode(std::vector<double>(cache_elems, 0.0), s.dtype);
  b.v_cache = b.k_cache;
  std::vector<std::vector<double>> k(seqs), v(seqs);
  std::vector<int32_t> slots;
  std::vector<double> k_src, v_src;
  const int64_t src_ld = kv_row + 2;
  for (int64_t i = 0; i < seqs; ++i) {
    k[i] = RoundTo(RandomUniform(s.lengths[i] * kv_row, rng, -2.0, 2.0), s.dtype);
    v[i] = RoundTo(RandomUniform(s.lengths[i] * kv_row, rng), s.dtype);
    for (int64_t p = 0; p < s.lengths[i]; ++p) {
      slots.push_back(b.block_tables[i * b.max_blocks + p / s.block_size] * s.block_size +
                      p % s.block_size);
      for (int64_t d = 0; d < src_ld; ++d) {
        k_src.push_back(d < kv_row ? k[i][p * kv_row + d] : 9.0);
        v_src.push_back(d < kv_row ? v[i][p * kv_row + d] : 9.0);
      }
    }
  }
  const std::vector<uint8_t> k_raw = Encode(k_src, s.dtype), v_raw = Encode(v_src, s.dtype);
  KvWriteArgs w;
  w.tokens = slots.size();
  w.kv_heads = s.kv_heads;
  w.head_dim = s.head_dim;
  w.dtype = s.dtype;
  w.k = k_raw.data();
  w.k_ld = src_ld;
  w.v = v_raw.data();
  w.v_ld = src_ld;
  w.slot_mapping = slots.data();
  w.num_blocks = b.num_blocks;
  w.block_size = s.block_size;
  w.k_cache = b.k_cache.data();
  w.v_cache = b.v_cache.data();
  EXPECT_TRUE(backend.KvWrite(w).ok());

  for (int64_t i = 0; i < seqs; ++i) {
    for (int64_t p = s.first_query[i]; p < s.lengths[i]; ++p) {
      b.seq_ids.push_back(i);
      b.positions.push_back(p);
    }
  }
  b.tokens = b.seq_ids.size();
  const std::vector<double> q = RoundTo(RandomUniform(b.tokens * b.q_ld, rng, -2.0, 2.0), s.dtype);
  b.q = Encode(q, s.dtype);
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  b.want.assign(b.tokens * b.row, 0.0);
  const int64_t group = s.heads / s.kv_heads;
  for (int64_t t = 0; t < b.tokens; ++t) {
    const int64_t i = b.seq_ids[t], p = b.positions[t];
    const int64_t lo = s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0;
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t kvh = h / group;
      std::vector<double> sc;
      for (int64_t j = lo; j <= p; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.head_dim; ++d) {
          dot += q[t * b.q_ld + h * s.head_dim + d] * k[i][j * kv_row + kvh * s.head_dim + d];
        }
        sc.push_back(dot * scale);
      }
      const double m = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - m));
      for (int64_t d = 0; d < s.head_dim; ++d) {
        double acc = 0;
        for (int64_t j = lo; j <= p; ++j) {
          acc += sc[j - lo] * v[i][j * kv_row + kvh * s.head_dim + d];
        }
        b.want[t * b.row + h * s.head_dim + d] = acc / sum;
      }
    }
  }
  return b;
}

AttentionArgs ArgsFor(const Shape& s, const Batch& b, void* out) {
  AttentionArgs a;
  a.tokens = b.tokens;
  a.heads = s.heads;
  a.kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.dtype = s.dtype;
  a.q = b.q.data();
  a.q_ld = b.q_ld;
  a.k_cache = b.k_cache.data();
  a.v_cache = b.v_cache.data();
  a.num_blocks = b.num_blocks;
  a.block_size = s.block_size;
  a.num_seqs = s.lengths.size();
  a.max_blocks_per_seq = b.max_blocks;
  a.block_tables = b.block_tables.data();
  a.seq_ids = b.seq_ids.data();
  a.positions = b.positions.data();
  a.sliding_window = s.window;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  a.out = out;
  a.out_ld = b.out_ld;
  return a;
}

class AttentionTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
};

TEST_F(AttentionTest, MatchesReference) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  std::vector<Shape> shapes;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // Prefill of 3 ragged sequences, decode after a prefix, and prefill chunks mixed with
    // decode tokens in one call.
    const std::vector<std::vector<int64_t>> lengths = {{5, 17, 1}, {9, 33, 20}, {40, 3, 26}};
    const std::vector<std::vector<int64_t>> firsts = {{0, 0, 0}, {8, 32, 19}, {30, 2, 0}};
    for (size_t c = 0; c < lengths.size(); ++c) {
      for (auto [heads, kv_heads] :
           std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {8, 2}, {6, 1}}) {
        for (int64_t head_dim : {8, 64}) {
          for (int64_t block_size : {1, 16, 5}) {
            for (int64_t window : {0, 4}) {
              shapes.push_back(
                  {dtype, heads, kv_heads, head_dim, block_size, window, lengths[c], firsts[c]});
            }
          }
        }
      }
    }
    // Big enough for two threads to split the work.
    shapes.push_back({dtype, 8, 2, 64, 16, 0, {150, 97, 1}, {0, 0, 0}});
    shapes.push_back({dtype, 8, 2, 64, 16, 37, {150, 97, 60}, {0, 90, 59}});
  }
  for (const Shape& s : shapes) {
    SCOPED_TRACE(Name(s));
    const Batch b = MakeBatch(one_, s, rng);
    std::vector<std::vector<uint8_t>> outs;
    for (Backend* be : {static_cast<Backend*>(&one_), static_cast<Backend*>(&two_)}) {
      outs.push_back(Encode(std::vector<double>(b.tokens * b.out_ld, 77.0), s.dtype));
      ASSERT_TRUE(be->Attention(ArgsFor(s, b, outs.back().data())).ok());
    }
    ASSERT_EQ(outs[0], outs[1]) << "1 vs 2 threads";
    const std::vector<double> all = Decode(outs[0].data(), b.tokens * b.out_ld, s.dtype);
    std::vector<double> got(b.tokens * b.row);
    for (int64_t t = 0; t < b.tokens; ++t) {
      for (int64_t j = 0; j < b.out_ld; ++j) {
        if (j < b.row) {
          got[t * b.row + j] = all[t * b.out_ld + j];
        } else {
          ASSERT_EQ(all[t * b.out_ld + j], 77.0) << "padding written, t=" << t;
        }
      }
    }
    EXPECT_LE(MaxRelError(got, b.want), OpTol(s.dtype));

    // Each sequence alone gives the same bits as inside the batch.
    const size_t elem = DTypeSize(s.dtype);
    for (int64_t i = 0; i < static_cast<int64_t>(s.lengths.size()); ++i) {
      Batch alone = b;
      alone.seq_ids.clear();
      alone.positions.clear();
      std::vector<uint8_t> q;
      std::vector<int64_t> rows;
      for (int64_t t = 0; t < b.tokens; ++t) {
        if (b.seq_ids[t] != i) continue;
        rows.push_back(t);
        alone.seq_ids.push_back(i);
        alone.positions.push_back(b.positions[t]);
        q.insert(q.end(), b.q.begin() + t * b.q_ld * elem, b.q.begin() + (t + 1) * b.q_ld * elem);
      }
      alone.tokens = rows.size();
      alone.q = q;
      std::vector<uint8_t> out(alone.tokens * b.out_ld * elem);
      ASSERT_TRUE(two_.Attention(ArgsFor(s, alone, out.data())).ok());
      for (int64_t r = 0; r < alone.tokens; ++r) {
        ASSERT_TRUE(std::equal(out.begin() + r * b.out_ld * elem,
                               out.begin() + (r * b.out_ld + b.row) * elem,
                               outs[0].begin() + rows[r] * b.out_ld * elem))
            << "sequence " << i << " row " << r << " differs alone";
      }
    }
  }
}

// One sequence of 6 positions in 3 blocks of 2, all-f32, for the limits below.
struct Small {
  std::vector<float> q = std::vector<float>(2 * 4, 0.5f);
  std::vector<float> k_cache = std::vector<float>(4 * 2 * 4, 0.25f);
  std::vector<float> v_cache = std::vector<float>(4 * 2 * 4, 1.0f);
  std::vector<int32_t> block_tables = {3, 0, 2};
  std::vector<int32_t> seq_ids = {0, 0};
  std::vector<int32_t> positions = {4, 5};
  std::vector<float> out = std::vector<float>(2 * 4, 5.0f);
  AttentionArgs Args() {
    AttentionArgs a;
    a.tokens = 2;
    a.heads = 2;
    a.kv_heads = 1;
    a.head_dim = 2;
    a.q = q.data();
    a.q_ld = 4;
    a.k_cache = k_cache.data();
    a.v_cache = v_cache.data();
    a.num_blocks = 4;
    a.block_size = 2;
    a.num_seqs = 1;
    a.max_blocks_per_seq = 3;
    a.block_tables = block_tables.data();
    a.seq_ids = seq_ids.data();
    a.positions = positions.data();
    a.scale = 0.5f;
    a.out = out.data();
    a.out_ld = 4;
    return a;
  }
};

TEST_F(AttentionTest, DataAtTheLimits) {
  Small s;
  ASSERT_TRUE(one_.Attention(s.Args()).ok());
  for (float v : s.out) EXPECT_EQ(v, 1.0f);  // softmax-weighted mean of all-ones V
  auto expect_error = [&](const std::string& msg) {
    s.out.assign(8, 5.0f);
    const absl::Status st = two_.Attention(s.Args());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(st.message(), msg);
    for (float v : s.out) EXPECT_EQ(v, 5.0f) << "written before the check";
  };
  s.seq_ids[1] = 1;
  expect_error("attention: seq_ids[1]=1 is outside [0, num_seqs=1)");
  s.seq_ids[1] = -1;
  expect_error("attention: seq_ids[1]=-1 is outside [0, num_seqs=1)");
  s.seq_ids[1] = 0;
  s.positions[1] = 6;
  expect_error("attention: positions[1]=6 is outside [0, max_blocks_per_seq * block_size=6)");
  s.positions[1] = -1;
  expect_error("attention: positions[1]=-1 is outside [0, max_blocks_per_seq * block_size=6)");
  s.positions[1] = 5;
  s.block_tables[1] = 4;
  expect_error("attention: block_tables[0, 1]=4 is outside [0, num_blocks=4)");
  s.block_tables[1] = -1;
  expect_error("attention: block_tables[0, 1]=-1 is outside [0, num_blocks=4)");
  // A window of 1 from positions 4 and 5 reads only the last block: the bad entry is never
  // read; a window of 2 reaches position 3, in block 1.
  AttentionArgs a = s.Args();
  a.sliding_window = 1;
  EXPECT_TRUE(one_.Attention(a).ok());
  a.sliding_window = 2;
  EXPECT_EQ(one_.Attention(a).message(),
            "attention: block_tables[0, 1]=-1 is outside [0, num_blocks=4)");
  // Positions beyond the last query are not read either.
  s.block_tables = {3, 0, 2};
  s.positions = {0, 1};
  s.block_tables[2] = 99;
  EXPECT_TRUE(one_.Attention(s.Args()).ok());
}

TEST_F(AttentionTest, ValidationAtTheLimits) {
  Small s;
  auto msg = [&](const AttentionArgs& a) { return std::string(one_.Attention(a).message()); };
  AttentionArgs a = s.Args();
  a.tokens = -1;
  EXPECT_EQ(msg(a), "attention: tokens=-1 is negative");
  a = s.Args();
  a.heads = 0;
  EXPECT_EQ(msg(a), "attention: heads=0 must be positive");
  a = s.Args();
  a.kv_heads = 0;
  EXPECT_EQ(msg(a), "attention: kv_heads=0 must be positive");
  a = s.Args();
  a.kv_heads = 2;  // heads = 2: MHA
  a.q_ld = 4;
  EXPECT_EQ(one_.Attention(a).code(), absl::StatusCode::kOk);
  a.heads = 3;
  a.q_ld = a.out_ld = 6;
  EXPECT_EQ(msg(a), "attention: heads=3 is not a multiple of kv_heads=2");
  a = s.Args();
  a.head_dim = 0;
  EXPECT_EQ(msg(a), "attention: head_dim=0 must be positive");
  a = s.Args();
  a.num_blocks = 0;
  EXPECT_EQ(msg(a), "attention: num_blocks=0 must be positive");
  a = s.Args();
  a.block_size = 0;
  EXPECT_EQ(msg(a), "attention: block_size=0 must be positive");
  a = s.Args();
  a.num_seqs = 0;
  EXPECT_EQ(msg(a), "attention: num_seqs=0 must be positive");
  a = s.Args();
  a.max_blocks_per_seq = 0;
  EXPECT_EQ(msg(a), "attention: max_blocks_per_seq=0 must be positive");
  a = s.Args();
  a.sliding_window = -1;
  EXPECT_EQ(msg(a), "attention: sliding_window=-1 is negative");
  a.sliding_window = 1;
  EXPECT_TRUE(one_.Attention(a).ok());
  a = s.Args();
  a.scale = std::numeric_limits<float>::infinity();
  EXPECT_EQ(msg(a), "attention: scale=inf must be finite");
  a.scale = std::nanf("");
  EXPECT_EQ(msg(a), "attention: scale=nan must be finite");
  a = s.Args();
  a.dtype = DType::kF16;
  EXPECT_EQ(one_.Attention(a).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(msg(a), "attention: dtype=f16 (supported: f32, bf16)");
  a = s.Args();
  a.q_ld = 3;
  EXPECT_EQ(msg(a), "attention: q_ld=3 is less than the row length 4");
  a = s.Args();
  a.out_ld = 3;
  EXPECT_EQ(msg(a), "attention: out_ld=3 is less than the row length 4");
  for (const char* field :
       {"q", "k_cache", "v_cache", "block_tables", "seq_ids", "positions", "out"}) {
    a = s.Args();
    const std::string f = field;
    if (f == "q") a.q = nullptr;
    if (f == "k_cache") a.k_cache = nullptr;
    if (f == "v_cache") a.v_cache = nullptr;
    if (f == "block_tables") a.block_tables = nullptr;
    if (f == "seq_ids") a.seq_ids = nullptr;
    if (f == "positions") a.positions = nullptr;
    if (f == "out") a.out = nullptr;
    EXPECT_EQ(msg(a), absl::StrCat("attention: ", f, " is null"));
    a.tokens = 0;
    EXPECT_TRUE(one_.Attention(a).ok());
  }
}

TEST_F(AttentionTest, KvWriteAtTheLimits) {
  const std::vector<float> k = {1, 2, 3, 4}, v = {5, 6, 7, 8};  // 2 tokens, kv row 2
  std::vector<float> k_cache(3 * 2 * 2, 0.0f), v_cache(3 * 2 * 2, 0.0f);
  std::vector<int32_t> slots = {5, 0};
  auto args = [&] {
    KvWriteArgs a;
    a.tokens = 2;
    a.kv_heads = 2;
    a.head_dim = 1;
    a.k = k.data();
    a.k_ld = 2;
    a.v = v.data();
    a.v_ld = 2;
    a.slot_mapping = slots.data();
    a.num_blocks = 3;
    a.block_size = 2;
    a.k_cache = k_cache.data();
    a.v_cache = v_cache.data();
    return a;
  };
  ASSERT_TRUE(two_.KvWrite(args()).ok());
  EXPECT_EQ(k_cache, (std::vector<float>{3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2}));
  EXPECT_EQ(v_cache, (std::vector<float>{7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 5, 6}));
  slots = {1, 1};  // a repeated slot keeps the last token's row
  ASSERT_TRUE(one_.KvWrite(args()).ok());
  EXPECT_EQ(k_cache[2], 3.0f);
  EXPECT_EQ(k_cache[3], 4.0f);
  const std::vector<float> before = k_cache;
  for (int32_t bad : {6, -1}) {
    slots = {0, bad};
    const absl::Status st = one_.KvWrite(args());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(st.message(), absl::StrCat("kv_write: slot_mapping[1]=", bad,
                                         " is outside [0, num_blocks * block_size=6)"));
    EXPECT_EQ(k_cache, before) << "written before the check";
  }
  slots = {0, 1};
  KvWriteArgs a = args();
  a.tokens = -1;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: tokens=-1 is negative");
  a = args();
  a.kv_heads = 0;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: kv_heads=0 must be positive");
  a = args();
  a.head_dim = 0;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: head_dim=0 must be positive");
  a = args();
  a.num_blocks = 0;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: num_blocks=0 must be positive");
  a = args();
  a.block_size = 0;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: block_size=0 must be positive");
  a = args();
  a.dtype = DType::kI32;
  EXPECT_EQ(one_.KvWrite(a).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: dtype=i32 (supported: f32, bf16)");
  a = args();
  a.k_ld = 1;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: k_ld=1 is less than the row length 2");
  a = args();
  a.v_ld = 1;
  EXPECT_EQ(one_.KvWrite(a).message(), "kv_write: v_ld=1 is less than the row length 2");
  for (const char* field : {"k", "v", "slot_mapping", "k_cache", "v_cache"}) {
    a = args();
    const std::string f = field;
    if (f == "k") a.k = nullptr;
    if (f == "v") a.v = nullptr;
    if (f == "slot_mapping") a.slot_mapping = nullptr;
    if (f == "k_cache") a.k_cache = nullptr;
    if (f == "v_cache") a.v_cache = nullptr;
    EXPECT_EQ(one_.KvWrite(a).message(), absl::StrCat("kv_write: ", f, " is null"));
    a.tokens = 0;
    EXPECT_TRUE(one_.KvWrite(a).ok());
  }
}

}  // namespace
}  // namespace moe
