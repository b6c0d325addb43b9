// The CPU Attention kernel against a scalar form of backend.h's contract, bit for bit.
// backend.h fixes the fp32 operations of attention and their order (scores, partitions of
// kAttentionPartition positions, their merge); the scalar oracle below (one (token, head) pair
// at a time, each partition then the merge, one operation per statement) computes exactly
// them, and the vectorised kernel that groups query heads and tokens must give the same bytes on
// every shape: f32 and bf16,
// head dims that are and are not multiples of 8, every GQA ratio up to 8, sliding windows,
// ragged mixes of prefill chunks, decode tokens and scattered positions in any token order,
// block sizes 1 to 16, contexts from 1 to 1500 positions, scales that make exp underflow,
// infinite scores, and one and two threads. Cache slots that no query may read hold NaN, so a
// read outside a query's positions shows in the output. On a CPU with AVX-512 this runs the
// AVX-512 tiles; attention_bitwise_avx2_test runs it again with MOE_ATTENTION_ISA=avx2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"
#include "kernels/dtype.h"
#include "tests/testing/test_util.h"

namespace moe {
namespace {

using ::moe::testing::TestSeed;

// The contract's operations for one (token, head) pair (its dot as the scalar kernel of
// kernels/cpu/attention.cc before vectorisation, commit 168d574), and a loop over every pair.
namespace oracle {

using cpu_kernels::LoadBf16;
using cpu_kernels::StoreBf16;

MOE_CPU_INLINE float Load(const float* p) { return *p; }
MOE_CPU_INLINE float Load(const uint16_t* p) { return LoadBf16(*p); }
MOE_CPU_INLINE void Store(float v, float* p) { *p = v; }
MOE_CPU_INLINE void Store(float v, uint16_t* p) { *p = StoreBf16(v); }

int64_t FirstVisible(int64_t p, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
}

template <typename T>
MOE_CPU_INLINE float Dot8(const float* q, const T* k, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
#pragma omp simd
    for (int l = 0; l < 8; ++l) lane[l] += q[d + l] * Load(k + d + l);
  }
  for (int l = 0; d < n; ++d, ++l) lane[l] += q[d] * Load(k + d);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

template <typename T>
void AttendOne(const AttentionArgs& a, int64_t t, int64_t h) {
  const int64_t hd = a.head_dim;
  const int64_t kvh = h / (a.heads / a.kv_heads);
  const int64_t slot_stride = a.kv_heads * hd;
  const int32_t* table = a.block_tables + a.seq_ids[t] * a.max_blocks_per_seq;
  const int64_t p = a.positions[t];
  const int64_t lo = FirstVisible(p, a.sliding_window);
  const int64_t n = p - lo + 1;
  const T* k_cache = static_cast<const T*>(a.k_cache) + kvh * hd;
  const T* v_cache = static_cast<const T*>(a.v_cache) + kvh * hd;
  auto row_of = [&](int64_t j) {
    return (static_cast<int64_t>(table[j / a.block_size]) * a.block_size + j % a.block_size) *
           slot_stride;
  };

  cpu_kernels::Scratch<float, 256> q(hd);
  cpu_kernels::Scratch<float, 256> acc(hd);
  cpu_kernels::Scratch<float, 256> part_acc(hd);
  cpu_kernels::Scratch<float, 2048> score(n);
  const T* q_src = static_cast<const T*>(a.q) + t * a.q_ld + h * hd;
  for (int64_t d = 0; d < hd; ++d) q[d] = Load(q_src + d);

  for (int64_t j = 0; j < n; ++j) score[j] = a.scale * Dot8(q.data(), k_cache + row_of(lo + j), hd);
  // Partitions of kAttentionPartition absolute positions: [first, last] of each, relative to lo.
  const int64_t part_first = lo / kAttentionPartition, part_last = p / kAttentionPartition;
  auto begin_of = [&](int64_t i) { return std::max(lo, i * kAttentionPartition) - lo; };
  auto end_of = [&](int64_t i) { return std::min(p, (i + 1) * kAttentionPartition - 1) - lo; };
  std::vector<float> part_m;
  for (int64_t i = part_first; i <= part_last; ++i) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = begin_of(i); j <= end_of(i); ++j) m = std::max(m, score[j]);
    part_m.push_back(m);
  }
  float m = -std::numeric_limits<float>::infinity();
  for (float mi : part_m) m = std::max(m, mi);
  float sum = 0.0f;
  for (int64_t d = 0; d < hd; ++d) acc[d] = 0.0f;
  for (int64_t i = part_first; i <= part_last; ++i) {
    const float mi = part_m[i - part_first];
    float part_sum = 0.0f;
    for (int64_t d = 0; d < hd; ++d) part_acc[d] = 0.0f;
    for (int64_t j = begin_of(i); j <= end_of(i); ++j) {
      const float e = cpu_kernels::ExpF(score[j] - mi);
      part_sum += e;
      const T* v = v_cache + row_of(lo + j);
      for (int64_t d = 0; d < hd; ++d) part_acc[d] += e * Load(v + d);
    }
    const float w = cpu_kernels::ExpF(mi - m);
    sum += w * part_sum;
    for (int64_t d = 0; d < hd; ++d) acc[d] += w * part_acc[d];
  }
  T* out = static_cast<T*>(a.out) + t * a.out_ld + h * hd;
  for (int64_t d = 0; d < hd; ++d) Store(acc[d] / sum, out + d);
}

void Attend(const AttentionArgs& a) {
  for (int64_t t = 0; t < a.tokens; ++t) {
    for (int64_t h = 0; h < a.heads; ++h) {
      if (a.dtype == DType::kF32) {
        AttendOne<float>(a, t, h);
      } else {
        AttendOne<uint16_t>(a, t, h);
      }
    }
  }
}

}  // namespace oracle

struct Case {
  DType dtype = DType::kF32;
  int64_t heads = 1, kv_heads = 1, head_dim = 8, block_size = 16, window = 0;
  float scale = 1.0f;
  std::vector<int64_t> lengths;                      // cached positions per sequence
  std::vector<std::pair<int32_t, int32_t>> queries;  // (sequence, position), batch order
  float qk_range = 2.0f;  // q and K uniform in [-qk_range, qk_range), V in [-1, 1)
};

std::string Name(const Case& c) {
  std::string seqs;
  for (int64_t len : c.lengths) absl::StrAppend(&seqs, " ", len);
  std::string queries;
  for (size_t i = 0; i < c.queries.size() && i < 40; ++i) {
    absl::StrAppend(&queries, " ", c.queries[i].first, ":", c.queries[i].second);
  }
  if (c.queries.size() > 40) absl::StrAppend(&queries, " ... (", c.queries.size(), ")");
  return absl::StrCat(DTypeName(c.dtype), " heads=", c.heads, "/", c.kv_heads,
                      " head_dim=", c.head_dim, " block_size=", c.block_size, " window=", c.window,
                      " scale=", c.scale, " qk_range=", c.qk_range, " lengths", seqs, " queries",
                      queries);
}

// Raw bytes of a float in `dtype` (bf16 rounds to nearest even).
void Put(float f, DType dtype, uint8_t* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, &f, sizeof(f));
  } else {
    const uint16_t b = FloatToBf16(f).bits;
    std::memcpy(dst, &b, sizeof(b));
  }
}

// Runs the case on the oracle and on the backends; every output byte (row padding included)
// must agree.
void Check(const Case& c, std::mt19937_64& rng, const std::vector<Backend*>& backends) {
  SCOPED_TRACE(Name(c));
  const int64_t elem = DTypeSize(c.dtype);
  const int64_t seqs = c.lengths.size();
  const int64_t kv_row = c.kv_heads * c.head_dim;
  const int64_t row = c.heads * c.head_dim;
  int64_t max_blocks = 1;
  for (int64_t len : c.lengths) {
    max_blocks = std::max(max_blocks, (len + c.block_size - 1) / c.block_size + 1);
  }
  // Two spare blocks nobody owns; every sequence's table ends with entries left at -1.
  const int64_t num_blocks = seqs * max_blocks + 2;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> tables(seqs * max_blocks, -1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> k_cache(num_blocks * c.block_size * kv_row * elem);
  std::vector<uint8_t> v_cache(k_cache.size());
  for (int64_t i = 0; i < num_blocks * c.block_size * kv_row; ++i) {
    Put(nan, c.dtype, &k_cache[i * elem]);
    Put(nan, c.dtype, &v_cache[i * elem]);
  }
  std::uniform_real_distribution<float> qk(-c.qk_range, c.qk_range), v(-1.0f, 1.0f);
  int64_t next = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t b = 0; b * c.block_size < c.lengths[s]; ++b) {
      tables[s * max_blocks + b] = ids[next++];
    }
    for (int64_t p = 0; p < c.lengths[s]; ++p) {
      const int64_t slot =
          tables[s * max_blocks + p / c.block_size] * c.block_size + p % c.block_size;
      for (int64_t x = 0; x < kv_row; ++x) {
        Put(qk(rng), c.dtype, &k_cache[(slot * kv_row + x) * elem]);
        Put(v(rng), c.dtype, &v_cache[(slot * kv_row + x) * elem]);
      }
    }
  }
  const int64_t tokens = c.queries.size();
  std::vector<int32_t> seq_ids(tokens), positions(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    seq_ids[t] = c.queries[t].first;
    positions[t] = c.queries[t].second;
  }
  const int64_t q_ld = row + 3, out_ld = row + 5;
  std::vector<uint8_t> q(tokens * q_ld * elem);
  for (int64_t i = 0; i < tokens * q_ld; ++i) Put(qk(rng), c.dtype, &q[i * elem]);

  AttentionArgs a;
  a.tokens = tokens;
  a.heads = c.heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.head_dim;
  a.dtype = c.dtype;
  a.q = q.data();
  a.q_ld = q_ld;
  a.k_cache = k_cache.data();
  a.v_cache = v_cache.data();
  a.num_blocks = num_blocks;
  a.block_size = c.block_size;
  a.num_seqs = seqs;
  a.max_blocks_per_seq = max_blocks;
  a.block_tables = tables.data();
  a.seq_ids = seq_ids.data();
  a.positions = positions.data();
  a.sliding_window = c.window;
  a.scale = c.scale;
  std::vector<uint8_t> want(tokens * out_ld * elem);
  for (int64_t i = 0; i < tokens * out_ld; ++i) Put(77.0f, c.dtype, &want[i * elem]);
  std::vector<uint8_t> got = want;
  a.out = want.data();
  a.out_ld = out_ld;
  oracle::Attend(a);
  for (size_t b = 0; b < backends.size(); ++b) {
    std::fill(got.begin(), got.end(), 0x5a);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t x = row; x < out_ld; ++x) Put(77.0f, c.dtype, &got[(t * out_ld + x) * elem]);
    }
    a.out = got.data();
    ASSERT_TRUE(backends[b]->Attention(a).ok());
    if (got == want) continue;
    int64_t i = 0;
    while (std::memcmp(&got[i * elem], &want[i * elem], elem) == 0) ++i;
    const std::vector<double> g = testing::Decode(&got[i * elem], 1, c.dtype);
    const std::vector<double> w = testing::Decode(&want[i * elem], 1, c.dtype);
    FAIL() << "backend " << b << ": first difference at token " << i / out_ld << ", column "
           << i % out_ld << ": got " << g[0] << ", oracle " << w[0];
  }
}

// A random case: heads / kv_heads 1..8 with 1..4 kv heads, head dims from 1 to 192, each
// sequence queried as a full prefill, a chunk, a decode token or a scattered set of positions.
Case RandomCase(std::mt19937_64& rng, DType dtype) {
  auto pick = [&](auto... v) {
    const int64_t options[] = {v...};
    return options[std::uniform_int_distribution<int>(0, sizeof...(v) - 1)(rng)];
  };
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  Case c;
  c.dtype = dtype;
  c.head_dim = pick(1, 2, 3, 5, 7, 8, 12, 16, 20, 24, 36, 40, 64, 72, 96, 128, 128, 192);
  c.kv_heads = uniform(1, 4);
  c.heads = c.kv_heads * uniform(1, 8);
  c.block_size = pick(1, 4, 16, 5);
  c.window = uniform(0, 1) ? 0 : pick(1, 2, 3, 7, 16, 33, 64);
  c.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  if (uniform(0, 4) == 0) c.scale = std::uniform_real_distribution<float>(0.01f, 4.0f)(rng);
  c.qk_range = uniform(0, 5) == 0 ? 8.0f : 2.0f;
  const int64_t seqs = uniform(1, 4);
  const int64_t longest = c.head_dim >= 96 ? 90 : 160;
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t len = uniform(0, 6) == 0 ? uniform(longest, 3 * longest) : uniform(1, longest);
    c.lengths.push_back(len);
    switch (uniform(0, 3)) {
      case 0:  // prefill of everything
        for (int32_t p = 0; p < len; ++p) c.queries.push_back({s, p});
        break;
      case 1: {  // a chunk after a prefix
        const int64_t first = uniform(0, len - 1);
        for (int32_t p = first; p < len; ++p) c.queries.push_back({s, p});
        break;
      }
      case 2:  // decode
        c.queries.push_back({s, len - 1});
        break;
      default:  // scattered positions, some repeated, not all in order
        for (int64_t i = uniform(1, 12); i > 0; --i) {
          c.queries.push_back({s, static_cast<int32_t>(uniform(0, len - 1))});
        }
        break;
    }
  }
  if (uniform(0, 3) == 0) std::shuffle(c.queries.begin(), c.queries.end(), rng);
  return c;
}

class AttentionBitwiseTest : public ::testing::Test {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
  std::vector<Backend*> both_ = {&one_, &two_};
};

TEST_F(AttentionBitwiseTest, RandomShapes) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 1000; ++i) {
    const Case c = RandomCase(rng, i % 2 == 0 ? DType::kF32 : DType::kBF16);
    Check(c, rng, both_);
    if (HasFatalFailure()) return;
  }
}

// Head dims from 1 to 192, multiples of 8 and not, and every GQA ratio from 1 to 8, on one
// ragged batch: a 70-token prefill, a decode token at 40 and a 9-token chunk from 30.
TEST_F(AttentionBitwiseTest, HeadDimsAndGroups) {
  std::mt19937_64 rng(TestSeed());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t head_dim : {1, 4, 8, 20, 24, 36, 64, 128, 192}) {
      for (int64_t group = 1; group <= 8; ++group) {
        for (int64_t block_size : {1, 4, 16}) {
          Case c;
          c.dtype = dtype;
          c.kv_heads = group % 2 + 1;
          c.heads = c.kv_heads * group;
          c.head_dim = head_dim;
          c.block_size = block_size;
          c.window = block_size == 4 ? 13 : 0;
          c.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
          c.lengths = {70, 41, 39};
          for (int32_t p = 0; p < 70; ++p) c.queries.push_back({0, p});
          c.queries.push_back({1, 40});
          for (int32_t p = 30; p < 39; ++p) c.queries.push_back({2, p});
          Check(c, rng, both_);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// The model shapes the kernel is tuned for, long enough for many K / V chunks: Qwen3-30B-A3B
// (32 / 4, head_dim 128), Mixtral (32 / 8, 128, a sliding window), and an MHA; a 230-token
// prefill with decode tokens at contexts up to 1500 (scratch beyond the stack buffer).
TEST_F(AttentionBitwiseTest, ModelShapes) {
  std::mt19937_64 rng(TestSeed());
  struct Shape {
    int64_t heads, kv_heads, head_dim, window;
  };
  for (const Shape& s : {Shape{32, 4, 128, 0}, Shape{32, 8, 128, 100}, Shape{8, 8, 64, 0}}) {
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      Case c;
      c.dtype = dtype;
      c.heads = s.heads;
      c.kv_heads = s.kv_heads;
      c.head_dim = s.head_dim;
      c.window = s.window;
      c.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
      c.lengths = {230, 300, 97, 5, 1500};
      for (int32_t p = 0; p < 230; ++p) c.queries.push_back({0, p});
      for (int32_t s2 = 1; s2 < 5; ++s2) {
        c.queries.push_back({s2, static_cast<int32_t>(c.lengths[s2] - 1)});
      }
      Check(c, rng, both_);
      if (HasFatalFailure()) return;
    }
  }
}

// Windows narrower than a group of tokens (the tokens' ranges barely overlap), exp underflow
// (score gaps beyond 87 with a large scale), all-zero queries and keys (every score 0), and
// products beyond the fp32 range (infinite scores, NaN from inf - inf).
TEST_F(AttentionBitwiseTest, EdgeValues) {
  std::mt19937_64 rng(TestSeed());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t window : {1, 2, 3}) {
      Case c;
      c.dtype = dtype;
      c.heads = 4;
      c.kv_heads = 4;
      c.head_dim = 24;
      c.block_size = 4;
      c.window = window;
      c.lengths = {50};
      for (int32_t p = 0; p < 50; ++p) c.queries.push_back({0, p});
      Check(c, rng, both_);
    }
    for (float scale : {4.0f, 40.0f}) {
      Case c;
      c.dtype = dtype;
      c.heads = 8;
      c.kv_heads = 2;
      c.head_dim = 64;
      c.scale = scale;
      c.qk_range = 8.0f;
      c.lengths = {80, 33};
      for (int32_t p = 0; p < 80; ++p) c.queries.push_back({0, p});
      c.queries.push_back({1, 32});
      Check(c, rng, both_);
    }
    Case c;
    c.dtype = dtype;
    c.heads = 8;
    c.kv_heads = 1;
    c.head_dim = 20;
    c.qk_range = 0.0f;  // uniform(-0, 0): q and K all zero
    c.lengths = {40};
    for (int32_t p = 0; p < 40; ++p) c.queries.push_back({0, p});
    Check(c, rng, both_);
    // Products beyond the fp32 range: infinite scores, inf - inf = NaN.
    c.qk_range = 1e20f;
    Check(c, rng, both_);
  }
}

// Partition boundaries (kAttentionPartition = 64): contexts just below, at and above multiples
// of 64; windows whose first visible position is not a multiple of 64; prefill chunks that
// start mid-partition (a group's first chunk is short); score gaps that make some partitions'
// weights underflow to 0; and infinite scores over several partitions.
TEST_F(AttentionBitwiseTest, Partitions) {
  std::mt19937_64 rng(TestSeed());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t window : {0, 100, 64, 65, 200}) {
      Case c;
      c.dtype = dtype;
      c.heads = 8;
      c.kv_heads = 2;
      c.head_dim = 40;
      c.block_size = 16;
      c.window = window;
      c.scale = 0.16f;
      c.lengths = {63, 64, 65, 127, 128, 129, 300, 1000};
      for (int32_t s = 0; s < 8; ++s) {
        c.queries.push_back({s, static_cast<int32_t>(c.lengths[s] - 1)});
      }
      for (int32_t p = 100; p < 300; ++p) c.queries.push_back({6, p});  // a chunk from 100
      for (int32_t p = 190; p < 200; ++p) c.queries.push_back({7, p});
      Check(c, rng, both_);
      if (HasFatalFailure()) return;
    }
    for (float qk_range : {8.0f, 1e20f}) {
      Case c;
      c.dtype = dtype;
      c.heads = 4;
      c.kv_heads = 4;
      c.head_dim = 16;
      c.scale = 40.0f;
      c.qk_range = qk_range;
      c.lengths = {300, 200};
      for (int32_t p = 37; p < 300; ++p) c.queries.push_back({0, p});
      c.queries.push_back({1, 199});
      Check(c, rng, both_);
      if (HasFatalFailure()) return;
    }
  }
}

}  // namespace
}  // namespace moe
