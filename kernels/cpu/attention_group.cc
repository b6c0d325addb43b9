// The three passes of one attention group (see attention_group.h), with the AVX2 tiles of
// attention_tiles.h or the AVX-512 ones of attention_tiles_avx512.h.
#include "kernels/cpu/attention_group.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/attention_tiles_avx512.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace cpu_kernels {
namespace {

MOE_CPU_INLINE float Load(const float* p) { return *p; }
MOE_CPU_INLINE float Load(const uint16_t* p) { return LoadBf16(*p); }
MOE_CPU_INLINE void Store(float v, float* p) { *p = v; }
MOE_CPU_INLINE void Store(float v, uint16_t* p) { *p = StoreBf16(v); }

int64_t RoundUp8(int64_t n) { return (n + 7) / 8 * 8; }
int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }

// Where K or V of position j of one kv head starts in the cache.
template <typename T>
MOE_CPU_INLINE const T* CacheRow(const AttentionArgs& a, const T* cache, const int32_t* table,
                                 int64_t j) {
  const int64_t slot =
      static_cast<int64_t>(table[j / a.block_size]) * a.block_size + j % a.block_size;
  return cache + slot * a.kv_heads * a.head_dim;
}

// The rows of the next chunk, whose cache lines are asked for a few rows at a time between the
// tiles of this chunk: reading memory then overlaps the arithmetic (asking for them all at once
// stalls on the core's queue of outstanding misses), which makes decode ~2x faster.
class RowPrefetch {
 public:
  template <typename T>
  void Set(const AttentionArgs& a, const T* cache, const int32_t* table, int64_t first,
           int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
      src_[i] = reinterpret_cast<const char*>(CacheRow(a, cache, table, first + i));
    }
    count_ = count;
    bytes_ = a.head_dim * static_cast<int64_t>(sizeof(T));
    next_ = 0;
  }
  void Clear() { count_ = next_ = 0; }
  // The next `steps` calls of Step() ask for all rows not asked for yet.
  void Spread(int64_t steps) {
    per_step_ = (count_ - next_ + steps - 1) / std::max<int64_t>(steps, 1);
  }
  MOE_CPU_INLINE void Step() { Ask(per_step_); }
  // Asks for the rows left (the chunk had fewer steps than Spread was told).
  void Finish() { Ask(count_); }

 private:
  MOE_CPU_INLINE void Ask(int64_t n) {
    for (int64_t x = 0; x < n && next_ < count_; ++x, ++next_) {
      for (int64_t b = 0; b < bytes_; b += 64) __builtin_prefetch(src_[next_] + b);
      __builtin_prefetch(src_[next_] + bytes_ - 1);
    }
  }

  const char* src_[kAttentionChunk];
  int64_t count_ = 0;
  int64_t bytes_ = 0;
  int64_t next_ = 0;
  int64_t per_step_ = 0;
};

// rows[i] = K or V of position first + i (i < count) as hd8 fp32 values: the cache row itself
// when in_place (f32, head_dim a multiple of 8), else a copy in buf padded with +0.0f.
template <typename T>
void PrepareRows(const AttentionArgs& a, const T* cache, const int32_t* table, int64_t first,
                 int64_t count, bool in_place, float* buf, const float** rows) {
  const int64_t hd = a.head_dim;
  const int64_t hd8 = RoundUp8(hd);
  for (int64_t i = 0; i < count; ++i) {
    const T* src = CacheRow(a, cache, table, first + i);
    if (in_place) {
      rows[i] = reinterpret_cast<const float*>(src);
      continue;
    }
    float* dst = buf + i * hd8;
#pragma omp simd
    for (int64_t d = 0; d < hd; ++d) dst[d] = Load(src + d);
    for (int64_t d = hd; d < hd8; ++d) dst[d] = 0.0f;
    rows[i] = dst;
  }
}

// What the passes share about a group.
struct Group {
  int64_t rows, rows8, hd8, span;
  int64_t base;   // the absolute position of relative position 0
  int64_t p0;     // the partition of position `base`
  int64_t parts;  // partitions p0 .. p0 + parts - 1 hold the group's positions
  const float** chunk_rows;  // [kAttentionChunk] the K or V rows of the current chunk
  RowPrefetch* prefetch;
};

// Partition p0 + i's positions, relative to the group's first.
int64_t PartBegin(const Group& g, int64_t i) {
  return std::max<int64_t>(0, (g.p0 + i) * kAttentionPartition - g.base);
}
int64_t PartEnd(const Group& g, int64_t i) {
  return std::min<int64_t>(g.span - 1, (g.p0 + i + 1) * kAttentionPartition - 1 - g.base);
}
// Whether row r sees a position of partition p0 + i.
bool Sees(const AttentionScratch& w, const Group& g, int64_t r, int64_t i) {
  return w.lo[r] <= PartEnd(g, i) && w.hi[r] >= PartBegin(g, i);
}

// Scores of rows [r0, r0 + RQ) (r0 even: the start of a query pair) for positions
// [j_begin, j_end] of the chunk starting at c0 (positions relative to the group's first).
template <int RQ>
void ScoreRows(const AttentionScratch& w, const Group& g, float scale, int64_t c0, int64_t r0,
               int64_t j_begin, int64_t j_end) {
  constexpr int kKeys = 8 / RQ;
  for (int64_t j = j_begin; j <= j_end; j += kKeys) {
    g.prefetch->Step();
    const float* k[kKeys];
    for (int x = 0; x < kKeys; ++x) k[x] = g.chunk_rows[std::min(j + x, j_end) - c0];
    alignas(32) float out[8];
    ScoreTile<RQ>(w.q + r0 * g.hd8, k, g.hd8, scale, out);
    for (int x = 0; x < kKeys && j + x <= j_end; ++x) {
      for (int i = 0; i < RQ; ++i) w.s[(j + x) * g.rows8 + r0 + i] = out[x * RQ + i];
    }
  }
}

// acc of rows [r0, r0 + RQ) += the weighted V rows of chunk positions [j_begin, j_end]
// (relative to the chunk's first, c0), all dims.
template <int RQ>
void AccumulateRows(const AttentionScratch& w, const Group& g, int64_t c0, int64_t r0,
                    int64_t j_begin, int64_t j_end) {
  constexpr int kDims = 8 / RQ;
  const float* e = w.s + c0 * g.rows8 + r0;
  float* acc = w.pacc + r0 * g.hd8;
  int64_t d = 0;
  for (; d + 8 * kDims <= g.hd8; d += 8 * kDims) {
    g.prefetch->Step();
    AccumulateV<RQ, kDims>(e, g.rows8, g.chunk_rows, d, j_begin, j_end + 1, acc + d, g.hd8);
  }
  for (; d < g.hd8; d += 8) {
    g.prefetch->Step();
    AccumulateV<RQ, 1>(e, g.rows8, g.chunk_rows, d, j_begin, j_end + 1, acc + d, g.hd8);
  }
}

#if defined(MOE_HAVE_AVX512_TILES)
// ScoreRows for rows [r0, r0 + 2 * PQ) with the AVX-512 tiles (a padding row past the last
// row only writes its own column of w.s).
template <int PQ, int kKeys>
MOE_AVX512 void ScoreRows512(const AttentionScratch& w, const Group& g, float scale, int64_t c0,
                             int64_t r0, int64_t j_begin, int64_t j_end) {
  for (int64_t j = j_begin; j <= j_end; j += kKeys) {
    g.prefetch->Step();
    const float* k[kKeys];
    for (int x = 0; x < kKeys; ++x) k[x] = g.chunk_rows[std::min(j + x, j_end) - c0];
    alignas(64) float out[2 * PQ * kKeys];
    ScoreTile512<PQ, kKeys>(w.q + r0 * g.hd8, k, g.hd8, scale, out);
    for (int x = 0; x < kKeys && j + x <= j_end; ++x) {
      for (int i = 0; i < 2 * PQ; ++i) w.s[(j + x) * g.rows8 + r0 + i] = out[x * 2 * PQ + i];
    }
  }
}

template <int RQ>
MOE_AVX512 void AccumulateRows512(const AttentionScratch& w, const Group& g, int64_t c0, int64_t r0,
                                  int64_t j_begin, int64_t j_end) {
  constexpr int kDims = RQ == 4 ? 4 : 8;  // 16-float registers: 16 or 8 accumulators
  const float* e = w.s + c0 * g.rows8 + r0;
  float* acc = w.pacc + r0 * g.hd8;
  int64_t d = 0;
  for (; d + 16 * kDims <= g.hd8; d += 16 * kDims) {
    g.prefetch->Step();
    AccumulateV512<RQ, kDims>(e, g.rows8, g.chunk_rows, d, j_begin, j_end + 1, acc + d, g.hd8);
  }
  for (; d + 16 <= g.hd8; d += 16) {
    g.prefetch->Step();
    AccumulateV512<RQ, 1>(e, g.rows8, g.chunk_rows, d, j_begin, j_end + 1, acc + d, g.hd8);
  }
  if (d < g.hd8) {
    g.prefetch->Step();
    AccumulateV<RQ, 1>(e, g.rows8, g.chunk_rows, d, j_begin, j_end + 1, acc + d, g.hd8);
  }
}

// The softmax of rows [r16, r16 + 16) over their positions in [pb, pe] (partition i).
MOE_AVX512 void Softmax16Rows(const AttentionScratch& w, const Group& g, int64_t i, int64_t pb,
                              int64_t pe, int64_t r16) {
  int64_t j_begin = pe + 1, j_end = pb - 1;
  for (int64_t r = r16; r < std::min(r16 + 16, g.rows); ++r) {
    j_begin = std::min<int64_t>(j_begin, std::max<int64_t>(w.lo[r], pb));
    j_end = std::max<int64_t>(j_end, std::min<int64_t>(w.hi[r], pe));
  }
  SoftmaxColumns16(w.s + r16, g.rows8, w.lo + r16, w.hi + r16, j_begin, j_end,
                   w.pm + i * g.rows8 + r16, w.psum + i * g.rows8 + r16);
}
#endif

// Pass 1: every row's scores over its positions (and, where a tile of rows covers more, over
// those too). Row tiles of 8 / 4 / 2 rows (AVX-512) or 4 / 2 / 1 (AVX2).
template <typename T, bool kAvx512>
void ScorePass(const AttentionArgs& a, const T* k_cache, const T* v_cache, const int32_t* table,
               int64_t base, bool in_place, const AttentionScratch& w, const Group& g) {
  for (int64_t c0 = 0; c0 < g.span; c0 += kAttentionChunk) {
    const int64_t c1 = std::min(g.span, c0 + kAttentionChunk) - 1;
    if (c1 + 1 < g.span) {
      g.prefetch->Set(a, k_cache, table, base + c1 + 1, std::min(kAttentionChunk, g.span - c1 - 1));
    } else {
      g.prefetch->Set(a, v_cache, table, base, std::min(kAttentionChunk, g.span));
    }
    // The tiles' steps: row tiles x key steps.
    g.prefetch->Spread(kAvx512 ? (g.rows + 7) / 8 * ((c1 - c0 + 4) / 4)
                               : (g.rows + 3) / 4 * ((c1 - c0 + 2) / 2));
    PrepareRows(a, k_cache, table, base + c0, c1 - c0 + 1, in_place, w.kv, g.chunk_rows);
    for (int64_t r0 = 0; r0 < g.rows;) {
      const int64_t left = g.rows - r0;
      const int64_t rq = kAvx512 ? (left >= 8   ? 8
                                    : left >= 4 ? 4
                                                : 2)
                                 : (left >= 4   ? 4
                                    : left >= 2 ? 2
                                                : 1);
      int64_t j_begin = c1 + 1, j_end = c0 - 1;
      for (int64_t r = r0; r < std::min(g.rows, r0 + rq); ++r) {
        j_begin = std::min<int64_t>(j_begin, std::max<int64_t>(w.lo[r], c0));
        j_end = std::max<int64_t>(j_end, std::min<int64_t>(w.hi[r], c1));
      }
#if defined(MOE_HAVE_AVX512_TILES)
      if (kAvx512) {
        if (rq == 8) {
          ScoreRows512<4, 4>(w, g, a.scale, c0, r0, j_begin, j_end);
        } else if (rq == 4) {
          ScoreRows512<2, 4>(w, g, a.scale, c0, r0, j_begin, j_end);
        } else {
          ScoreRows512<1, 8>(w, g, a.scale, c0, r0, j_begin, j_end);
        }
        r0 += rq;
        continue;
      }
#endif
      if (rq == 4) {
        ScoreRows<4>(w, g, a.scale, c0, r0, j_begin, j_end);
      } else if (rq == 2) {
        ScoreRows<2>(w, g, a.scale, c0, r0, j_begin, j_end);
      } else {
        ScoreRows<1>(w, g, a.scale, c0, r0, j_begin, j_end);
      }
      r0 += rq;
    }
    g.prefetch->Finish();
  }
}

// Pass 2: each partition's softmax, 16 (AVX-512) or 8 rows at a time; then each row's merge:
// m = the max of its partitions' m_i, w_i = exp(m_i - m) (into pm) and sum = sum of w_i * sum_i
// in ascending i.
template <bool kAvx512>
void SoftmaxPass(const AttentionScratch& w, const Group& g) {
  for (int64_t i = 0; i < g.parts; ++i) {
    const int64_t pb = PartBegin(g, i), pe = PartEnd(g, i);
    int64_t r8 = 0;
#if defined(MOE_HAVE_AVX512_TILES)
    if (kAvx512) {
      for (; r8 + 16 <= g.rows8; r8 += 16) Softmax16Rows(w, g, i, pb, pe, r8);
    }
#endif
    for (; r8 < g.rows8; r8 += 8) {
      // [j_begin, j_end] the union of the rows' positions in the partition, [all_begin,
      // all_end] their common part.
      int64_t j_begin = pe + 1, j_end = pb - 1, all_begin = pb, all_end = pe;
      for (int64_t r = r8; r < std::min(r8 + 8, g.rows); ++r) {
        j_begin = std::min<int64_t>(j_begin, std::max<int64_t>(w.lo[r], pb));
        j_end = std::max<int64_t>(j_end, std::min<int64_t>(w.hi[r], pe));
        all_begin = std::max<int64_t>(all_begin, w.lo[r]);
        all_end = std::min<int64_t>(all_end, w.hi[r]);
      }
      SoftmaxColumns8(w.s + r8, g.rows8, w.lo + r8, w.hi + r8, j_begin, j_end, all_begin,
                      all_end, w.pm + i * g.rows8 + r8, w.psum + i * g.rows8 + r8);
    }
  }
  for (int64_t r = 0; r < g.rows; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < g.parts; ++i) {
      if (Sees(w, g, r, i)) m = std::max(m, w.pm[i * g.rows8 + r]);
    }
    float sum = 0.0f;
    for (int64_t i = 0; i < g.parts; ++i) {
      if (!Sees(w, g, r, i)) continue;
      const float weight = ExpF(w.pm[i * g.rows8 + r] - m);
      w.pm[i * g.rows8 + r] = weight;
      sum += weight * w.psum[i * g.rows8 + r];
    }
    w.sum[r] = sum;
  }
}

// acc += w_i * acc_i for the rows that see partition p0 + i, which ends here; acc_i = 0 again.
void MergePartition(const AttentionScratch& w, const Group& g, int64_t i) {
  for (int64_t r = 0; r < g.rows; ++r) {
    float* pacc = w.pacc + r * g.hd8;
    if (Sees(w, g, r, i)) {
      const float weight = w.pm[i * g.rows8 + r];
      float* acc = w.acc + r * g.hd8;
#pragma omp simd
      for (int64_t d = 0; d < g.hd8; ++d) acc[d] += weight * pacc[d];
    }
    std::memset(pacc, 0, g.hd8 * sizeof(float));
  }
}

// Pass 3: acc = the weighted V sums. Consecutive rows that see the same positions of a chunk
// share a tile (so that no row ever adds a term of a position it does not see).
template <typename T, bool kAvx512>
void ValuePass(const AttentionArgs& a, const T* v_cache, const int32_t* table, int64_t base,
               bool in_place, const AttentionScratch& w, const Group& g) {
  std::memset(w.acc, 0, g.rows * g.hd8 * sizeof(float));
  std::memset(w.pacc, 0, g.rows * g.hd8 * sizeof(float));
  for (int64_t c0 = 0, c1 = 0; c0 < g.span; c0 = c1 + 1) {
    // The chunk ends before the next absolute multiple of kAttentionChunk.
    c1 = std::min(g.span, ((base + c0) / kAttentionChunk + 1) * kAttentionChunk - base) - 1;
    if (c1 + 1 < g.span) {
      g.prefetch->Set(a, v_cache, table, base + c1 + 1, std::min(kAttentionChunk, g.span - c1 - 1));
    } else {
      g.prefetch->Clear();
    }
    // The tiles' steps: row tiles x dim steps.
    g.prefetch->Spread(
        (g.rows + 3) / 4 *
        (kAvx512 ? g.hd8 / 64 + g.hd8 / 16 % 4 + g.hd8 / 8 % 2 : g.hd8 / 16 + g.hd8 / 8 % 2));
    PrepareRows(a, v_cache, table, base + c0, c1 - c0 + 1, in_place, w.kv, g.chunk_rows);
    for (int64_t r0 = 0; r0 < g.rows;) {
      const int64_t j_begin = std::max<int64_t>(w.lo[r0], c0);
      const int64_t j_end = std::min<int64_t>(w.hi[r0], c1);
      int64_t same = 1;
      while (same < 4 && r0 + same < g.rows && std::max<int64_t>(w.lo[r0 + same], c0) == j_begin &&
             std::min<int64_t>(w.hi[r0 + same], c1) == j_end) {
        ++same;
      }
      const int64_t rq = same >= 4 ? 4 : same >= 2 ? 2 : 1;
      if (j_begin <= j_end) {
        const int64_t jb = j_begin - c0, je = j_end - c0;
#if defined(MOE_HAVE_AVX512_TILES)
        if (kAvx512) {
          if (rq == 4) {
            AccumulateRows512<4>(w, g, c0, r0, jb, je);
          } else if (rq == 2) {
            AccumulateRows512<2>(w, g, c0, r0, jb, je);
          } else {
            AccumulateRows512<1>(w, g, c0, r0, jb, je);
          }
          r0 += rq;
          continue;
        }
#endif
        if (rq == 4) {
          AccumulateRows<4>(w, g, c0, r0, jb, je);
        } else if (rq == 2) {
          AccumulateRows<2>(w, g, c0, r0, jb, je);
        } else {
          AccumulateRows<1>(w, g, c0, r0, jb, je);
        }
      }
      r0 += rq;
    }
    g.prefetch->Finish();
    if (c1 + 1 == g.span || (base + c1 + 1) % kAttentionPartition == 0) {
      MergePartition(w, g, (base + c1) / kAttentionPartition - g.p0);
    }
  }
}

template <typename T, bool kAvx512>
void AttendGroupWith(const AttentionArgs& a, int64_t t0, int64_t tokens, int64_t kvh,
                     const AttentionScratch& w) {
  const int64_t heads_per_kv = a.heads / a.kv_heads;
  const int64_t hd = a.head_dim;
  const int32_t* table = a.block_tables + a.seq_ids[t0] * a.max_blocks_per_seq;
  const int64_t base = AttentionFirstVisible(a.positions[t0], a.sliding_window);
  const T* q = static_cast<const T*>(a.q);
  const T* k_cache = static_cast<const T*>(a.k_cache) + kvh * hd;
  const T* v_cache = static_cast<const T*>(a.v_cache) + kvh * hd;
  const float* chunk_rows[kAttentionChunk];
  RowPrefetch prefetch;
  Group g;
  g.rows = tokens * heads_per_kv;
  g.rows8 = RoundUp8(g.rows);
  g.hd8 = RoundUp8(hd);
  g.span = a.positions[t0 + tokens - 1] - base + 1;
  g.base = base;
  g.p0 = base / kAttentionPartition;
  g.parts = (base + g.span - 1) / kAttentionPartition - g.p0 + 1;
  g.chunk_rows = chunk_rows;
  g.prefetch = &prefetch;
  // f32 rows are read in place, unless there are enough query rows for a contiguous copy to
  // pay off (fewer cache and TLB misses in the tiles).
  const bool in_place = std::is_same<T, float>::value && hd == g.hd8 && g.rows < 16;

  // No earlier item read these query rows: ask for them first and set up the rest meanwhile.
  const int64_t q_bytes = heads_per_kv * hd * static_cast<int64_t>(sizeof(T));
  for (int64_t t = t0; t < t0 + tokens; ++t) {
    const char* src = reinterpret_cast<const char*>(q + t * a.q_ld + kvh * heads_per_kv * hd);
    for (int64_t b = 0; b < q_bytes; b += 64) __builtin_prefetch(src + b);
    __builtin_prefetch(src + q_bytes - 1);
  }
  // Scores that no tile computes are never read; zeroing them keeps the buffer defined.
  std::memset(w.s, 0, g.span * g.rows8 * sizeof(float));
  for (int64_t r = 0; r < g.rows8; ++r) {
    if (r < g.rows) {
      const int64_t p = a.positions[t0 + r / heads_per_kv];
      w.lo[r] = static_cast<int32_t>(AttentionFirstVisible(p, a.sliding_window) - base);
      w.hi[r] = static_cast<int32_t>(p - base);
    } else {
      w.lo[r] = 0;
      w.hi[r] = -1;
    }
  }
  for (int64_t r = 0; r < g.rows + g.rows % 2; ++r) {
    float* dst = w.q + (r / 2) * 2 * g.hd8 + (r % 2) * 8;  // row r's first block
    if (r == g.rows) {
      for (int64_t d = 0; d < g.hd8; d += 8) std::fill(dst + 2 * d, dst + 2 * d + 8, 0.0f);
      continue;
    }
    const T* src =
        q + (t0 + r / heads_per_kv) * a.q_ld + (kvh * heads_per_kv + r % heads_per_kv) * hd;
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8) {
#pragma omp simd
      for (int l = 0; l < 8; ++l) dst[2 * d + l] = Load(src + d + l);
    }
    if (d < hd) {  // a last, partial block
      for (int l = 0; l < 8; ++l) dst[2 * d + l] = d + l < hd ? Load(src + d + l) : -0.0f;
    }
  }

  ScorePass<T, kAvx512>(a, k_cache, v_cache, table, base, in_place, w, g);
  SoftmaxPass<kAvx512>(w, g);
  ValuePass<T, kAvx512>(a, v_cache, table, base, in_place, w, g);

  for (int64_t r = 0; r < g.rows; ++r) {
    T* out = static_cast<T*>(a.out) + (t0 + r / heads_per_kv) * a.out_ld +
             (kvh * heads_per_kv + r % heads_per_kv) * hd;
    const float* acc = w.acc + r * g.hd8;
    const float sum = w.sum[r];
#pragma omp simd
    for (int64_t d = 0; d < hd; ++d) Store(acc[d] / sum, out + d);
  }
}

}  // namespace

int64_t AttentionScratchFloats(int64_t max_rows, int64_t max_span, int64_t head_dim) {
  const int64_t hd8 = RoundUp8(head_dim);
  const int64_t rows8 = RoundUp8(max_rows);
  return 3 * RoundUp16((max_rows + 1) * hd8) + RoundUp16(max_span * rows8) +
         RoundUp16(kAttentionChunk * hd8) + RoundUp16(rows8) +
         2 * RoundUp16(AttentionMaxPartitions(max_span) * rows8) + 16;
}

int64_t AttentionScratchInts(int64_t max_rows) { return 2 * RoundUp8(max_rows); }

AttentionScratch CarveAttentionScratch(float* floats, int32_t* ints, int64_t max_rows,
                                       int64_t max_span, int64_t head_dim) {
  const int64_t hd8 = RoundUp8(head_dim);
  const int64_t rows8 = RoundUp8(max_rows);
  float* p = floats + (16 - reinterpret_cast<uintptr_t>(floats) / sizeof(float) % 16) % 16;
  AttentionScratch w;
  w.q = p;
  w.acc = w.q + RoundUp16((max_rows + 1) * hd8);
  w.s = w.acc + RoundUp16((max_rows + 1) * hd8);
  w.kv = w.s + RoundUp16(max_span * rows8);
  w.sum = w.kv + RoundUp16(kAttentionChunk * hd8);
  w.pacc = w.sum + RoundUp16(rows8);
  w.pm = w.pacc + RoundUp16((max_rows + 1) * hd8);
  w.psum = w.pm + RoundUp16(AttentionMaxPartitions(max_span) * rows8);
  w.lo = ints;
  w.hi = ints + rows8;
  return w;
}

bool AttentionUsesAvx512() {
#if defined(MOE_HAVE_AVX512_TILES)
  static const bool use = [] {
    const char* isa = std::getenv("MOE_ATTENTION_ISA");
    return CpuHasAvx512() && !(isa != nullptr && std::strcmp(isa, "avx2") == 0);
  }();
  return use;
#else
  return false;
#endif
}

template <typename T>
void AttendGroup(const AttentionArgs& a, int64_t t0, int64_t tokens, int64_t kvh, bool avx512,
                 const AttentionScratch& w) {
#if defined(MOE_HAVE_AVX512_TILES)
  if (avx512) {
    AttendGroupWith<T, true>(a, t0, tokens, kvh, w);
    return;
  }
#endif
  AttendGroupWith<T, false>(a, t0, tokens, kvh, w);
}

template void AttendGroup<float>(const AttentionArgs&, int64_t, int64_t, int64_t, bool,
                                 const AttentionScratch&);
template void AttendGroup<uint16_t>(const AttentionArgs&, int64_t, int64_t, int64_t, bool,
                                    const AttentionScratch&);

}  // namespace cpu_kernels
}  // namespace moe
