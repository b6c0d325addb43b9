// Register tiles of the CPU attention kernel (private to attention_group.cc). Each computes
// exactly the fp32 operations that backend.h's AttentionArgs contract orders, only for several
// query rows, keys or positions at once:
// - ScoreTile: scale * dot(q, k) for RQ query rows x (8 / RQ) keys. dot keeps 8 lanes (dim d to
//   lane d mod 8, a product then a sum per step, no fma) in one 8-wide accumulator per pair, and
//   adds the lanes as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
// - SoftmaxColumns8: m, exp(s - m) and the sum in ascending positions for 8 query rows, one per
//   lane.
// - AccumulateV: acc[r, d] += e[j, r] * v_j[d] (a product, then a sum) in ascending j for RQ
//   rows x 8 * DD dims, the accumulators held in registers across j.
// Rows are fp32 and padded to a multiple of 8 dims: a query's padding is -0.0f and a key's +0.0f,
// so the padding lanes add -0.0f, which leaves every value (-0.0f included) as it is.
// With AVX2 (always, under this build's -march=x86-64-v3) they are intrinsics; otherwise plain
// loops that do the same operations in the same order, so both give the same bits.
#ifndef MOE_KERNELS_CPU_ATTENTION_TILES_H_
#define MOE_KERNELS_CPU_ATTENTION_TILES_H_

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/cpu/cpu_kernels_util.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace moe {
namespace cpu_kernels {

#if defined(__AVX2__)
// Lane i of the result = ((a[i]0 + a[i]1) + (a[i]2 + a[i]3)) + ((a[i]4 + a[i]5) + (a[i]6 + a[i]7)).
// hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]: two rounds give
// (l0+l1)+(l2+l3) of accumulators 0-3 in the low half and (l4+l5)+(l6+l7) in the high half.
MOE_CPU_INLINE __m256 ReduceLanes(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

// Query rows are stored in pairs, 8 dims of one row then the same 8 of the other: row i's dims
// [d, d + 8) are at q + (i / 2) * 2 * n + 2 * d + (i % 2) * 8 for the pair-aligned q of the
// tile's first row (the AVX-512 tiles load both rows' blocks as one 16-float vector).
MOE_CPU_INLINE const float* PairedRow(const float* q, int i, int64_t n) {
  return q + (i / 2) * 2 * n + (i % 2) * 8;
}

// out[k * RQ + i] = scale * dot(row i of q, k[k]) for i < RQ, k < 8 / RQ; n a multiple of 8.
template <int RQ>
MOE_CPU_INLINE void ScoreTile(const float* q, const float* const* k, int64_t n, float scale,
                              float* out) {
  constexpr int kKeys = 8 / RQ;
#if defined(__AVX2__)
  __m256 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; d += 8) {
    __m256 kv[kKeys];
    for (int j = 0; j < kKeys; ++j) kv[j] = _mm256_loadu_ps(k[j] + d);
    for (int i = 0; i < RQ; ++i) {
      const __m256 qv = _mm256_loadu_ps(PairedRow(q, i, n) + 2 * d);
      for (int j = 0; j < kKeys; ++j) {
        acc[j * RQ + i] = _mm256_add_ps(acc[j * RQ + i], _mm256_mul_ps(qv, kv[j]));
      }
    }
  }
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(scale), ReduceLanes(acc)));
#else
  for (int j = 0; j < kKeys; ++j) {
    for (int i = 0; i < RQ; ++i) {
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t d = 0; d < n; d += 8) {
        for (int l = 0; l < 8; ++l) lane[l] += PairedRow(q, i, n)[2 * d + l] * k[j][d + l];
      }
      out[j * RQ + i] = scale * (((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                                 ((lane[4] + lane[5]) + (lane[6] + lane[7])));
    }
  }
#endif
}

// acc[i * acc_ld + c] += e[j * e_ld + i] * v[j][d0 + c] for j in [j_begin, j_end) ascending,
// i < RQ, c < 8 * DD.
template <int RQ, int DD>
MOE_CPU_INLINE void AccumulateV(const float* e, int64_t e_ld, const float* const* v, int64_t d0,
                                int64_t j_begin, int64_t j_end, float* acc, int64_t acc_ld) {
#if defined(__AVX2__)
  __m256 a[RQ][DD];
  for (int i = 0; i < RQ; ++i) {
    for (int c = 0; c < DD; ++c) a[i][c] = _mm256_loadu_ps(acc + i * acc_ld + 8 * c);
  }
  for (int64_t j = j_begin; j < j_end; ++j) {
    const float* vj = v[j] + d0;
    __m256 vv[DD];
    for (int c = 0; c < DD; ++c) vv[c] = _mm256_loadu_ps(vj + 8 * c);
    for (int i = 0; i < RQ; ++i) {
      const __m256 ej = _mm256_broadcast_ss(e + j * e_ld + i);
      for (int c = 0; c < DD; ++c) a[i][c] = _mm256_add_ps(a[i][c], _mm256_mul_ps(ej, vv[c]));
    }
  }
  for (int i = 0; i < RQ; ++i) {
    for (int c = 0; c < DD; ++c) _mm256_storeu_ps(acc + i * acc_ld + 8 * c, a[i][c]);
  }
#else
  for (int64_t j = j_begin; j < j_end; ++j) {
    for (int i = 0; i < RQ; ++i) {
      const float ej = e[j * e_ld + i];
      for (int c = 0; c < 8 * DD; ++c) acc[i * acc_ld + c] += ej * v[j][d0 + c];
    }
  }
#endif
}

// For 8 query rows (lanes) of a score matrix s[j * ld + lane], each lane with its own positions
// [lo[lane], hi[lane]] (empty when lo > hi), j in [j_begin, j_end]:
//   m = max of the scores in ascending j, as std::max(m, s) (from -inf)
//   s = exp(s - m) for every j in range (also outside a lane's own positions, where the value is
//       never read)
//   sum = sum of exp(s - m) over the lane's positions in ascending j (from 0)
// and writes m and sum per lane. Every lane is valid for j in [all_begin, all_end], where no
// masks are needed.
MOE_CPU_INLINE void SoftmaxColumns8(float* s, int64_t ld, const int32_t* lo, const int32_t* hi,
                                    int64_t j_begin, int64_t j_end, int64_t all_begin,
                                    int64_t all_end, float* m_out, float* sum) {
  alignas(32) float m[8];
  all_begin = std::max(all_begin, j_begin);
  all_end = std::min(all_end, j_end);
  if (all_begin > all_end) {  // no common positions: every step is masked
    all_begin = j_end + 1;
    all_end = j_end;
  }
#if defined(__AVX2__)
  const __m256i lo_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  const __m256i hi_v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
  // Lanes where lo <= j <= hi, as a float mask.
  auto valid = [&](int64_t j) {
    const __m256i jv = _mm256_set1_epi32(static_cast<int32_t>(j));
    return _mm256_castsi256_ps(_mm256_andnot_si256(
        _mm256_or_si256(_mm256_cmpgt_epi32(lo_v, jv), _mm256_cmpgt_epi32(jv, hi_v)),
        _mm256_set1_epi32(-1)));
  };
  // max_ps(x, m) = x > m ? x : m, which is std::max(m, x) = m < x ? x : m (NaN x and ties keep
  // m); a lane outside its positions compares -inf instead.
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mv = neg_inf;
  for (int64_t j = j_begin; j < all_begin; ++j) {
    mv = _mm256_max_ps(_mm256_blendv_ps(neg_inf, _mm256_loadu_ps(s + j * ld), valid(j)), mv);
  }
  for (int64_t j = all_begin; j <= all_end; ++j) {
    mv = _mm256_max_ps(_mm256_loadu_ps(s + j * ld), mv);
  }
  for (int64_t j = all_end + 1; j <= j_end; ++j) {
    mv = _mm256_max_ps(_mm256_blendv_ps(neg_inf, _mm256_loadu_ps(s + j * ld), valid(j)), mv);
  }
  _mm256_store_ps(m, mv);
  // sum + -0.0f is sum for every sum: a lane outside its positions adds -0.0f.
  const __m256 neg_zero = _mm256_set1_ps(-0.0f);
  __m256 sv = _mm256_setzero_ps();
  for (int64_t j = j_begin; j <= j_end; ++j) {
    float* row = s + j * ld;
#pragma omp simd
    for (int l = 0; l < 8; ++l) row[l] = ExpF(row[l] - m[l]);
    __m256 e = _mm256_loadu_ps(row);
    if (j < all_begin || j > all_end) e = _mm256_blendv_ps(neg_zero, e, valid(j));
    sv = _mm256_add_ps(sv, e);
  }
  _mm256_storeu_ps(sum, sv);
  for (int l = 0; l < 8; ++l) m_out[l] = m[l];
#else
  for (int l = 0; l < 8; ++l) {
    m[l] = -std::numeric_limits<float>::infinity();
    for (int64_t j = std::max<int64_t>(j_begin, lo[l]); j <= std::min<int64_t>(j_end, hi[l]); ++j) {
      m[l] = std::max(m[l], s[j * ld + l]);
    }
  }
  for (int64_t j = j_begin; j <= j_end; ++j) {
    for (int l = 0; l < 8; ++l) s[j * ld + l] = ExpF(s[j * ld + l] - m[l]);
  }
  for (int l = 0; l < 8; ++l) {
    m_out[l] = m[l];
    sum[l] = 0.0f;
    for (int64_t j = std::max<int64_t>(j_begin, lo[l]); j <= std::min<int64_t>(j_end, hi[l]); ++j) {
      sum[l] += s[j * ld + l];
    }
  }
#endif
}

}  // namespace cpu_kernels
}  // namespace moe

#endif  // MOE_KERNELS_CPU_ATTENTION_TILES_H_
