// AVX-512 forms of the attention register tiles (private to attention_group.cc), for CPUs with
// AVX-512F/DQ/VL, chosen at run time. They do the operations of attention_tiles.h in the same
// order, so they give the same bits; only more of them per instruction:
// - ScoreTile512: one 16-lane accumulator holds two 8-lane dot accumulators, query rows 2p and
//   2p + 1 against one key (the paired query layout of attention_tiles.h, the key's 8 dims
//   broadcast to both halves); the halves are then reduced by ReduceLanes as in the AVX2 tile.
// - AccumulateV512: 16 dims per register.
// - SoftmaxColumns16: SoftmaxColumns8 for 16 query rows, with Exp16 (ExpF's operations).
// Every function here is compiled for AVX-512 and must only run where CpuHasAvx512() is true.
// Zero-masked intrinsics with every lane set stand for the plain ones (same instructions): the
// plain broadcast, extract, convert and shift intrinsics, and the 512-to-256 cast, trip GCC 12's
// -Wmaybe-uninitialized.
#ifndef MOE_KERNELS_CPU_ATTENTION_TILES_AVX512_H_
#define MOE_KERNELS_CPU_ATTENTION_TILES_AVX512_H_

#include <cstdint>
#include <limits>

#include "kernels/cpu/attention_tiles.h"

#if defined(__AVX2__) && defined(__GNUC__)
#define MOE_HAVE_AVX512_TILES 1
#include <immintrin.h>

#define MOE_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl")))
#define MOE_AVX512_INLINE inline __attribute__((always_inline, target("avx512f,avx512dq,avx512vl")))

namespace moe {
namespace cpu_kernels {

inline bool CpuHasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}

// Row pairs [0, PQ) of q (paired layout, n dims) against kKeys keys:
// out[k * 2 * PQ + i] = scale * dot(row i, k[k]) for i < 2 * PQ, as ScoreTile<2 * PQ> when
// 2 * PQ * kKeys = 8; with PQ = 4 (8 rows) and 4 keys, out holds 4 rows of 8: key k's scores
// at out[8 * k, 8 * k + 8).
template <int PQ, int kKeys>
MOE_AVX512_INLINE void ScoreTile512(const float* q, const float* const* k, int64_t n, float scale,
                                    float* out) {
  static_assert(PQ * kKeys == 16 || PQ * kKeys == 8 || PQ * kKeys == 4, "whole reductions");
  __m512 acc[PQ][kKeys];
  for (int p = 0; p < PQ; ++p) {
    for (int j = 0; j < kKeys; ++j) acc[p][j] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < n; d += 8) {
    __m512 kv[kKeys];
    for (int j = 0; j < kKeys; ++j) {
      kv[j] = _mm512_maskz_broadcast_f32x8(0xffff, _mm256_loadu_ps(k[j] + d));
    }
    for (int p = 0; p < PQ; ++p) {
      const __m512 qv = _mm512_loadu_ps(q + p * 2 * n + 2 * d);
      for (int j = 0; j < kKeys; ++j) {
        acc[p][j] = _mm512_add_ps(acc[p][j], _mm512_mul_ps(qv, kv[j]));
      }
    }
  }
  // Eight 8-lane accumulators at a time, in the order of the output: for each key, rows
  // 0 .. 2 * PQ - 1 (a register's low half is the even row, its high half the odd one).
  const __m256 scale_v = _mm256_set1_ps(scale);
  constexpr int kKeysPerReduce = 8 / (2 * PQ) > 0 ? 8 / (2 * PQ) : 1;
  constexpr int kPairsPerReduce = 8 / (2 * kKeysPerReduce);
  int o = 0;
  for (int j0 = 0; j0 < kKeys; j0 += kKeysPerReduce) {
    for (int p0 = 0; p0 < PQ; p0 += kPairsPerReduce) {
      __m256 lanes[8];
      int x = 0;
      for (int j = j0; j < j0 + kKeysPerReduce; ++j) {
        for (int p = p0; p < p0 + kPairsPerReduce; ++p) {
          lanes[x++] = _mm512_maskz_extractf32x8_ps(0xff, acc[p][j], 0);
          lanes[x++] = _mm512_maskz_extractf32x8_ps(0xff, acc[p][j], 1);
        }
      }
      _mm256_storeu_ps(out + o, _mm256_mul_ps(scale_v, ReduceLanes(lanes)));
      o += 8;
    }
  }
}

// acc[i * acc_ld + c] += e[j * e_ld + i] * v[j][d0 + c] for j in [j_begin, j_end) ascending,
// i < RQ, c < 16 * DD.
template <int RQ, int DD>
MOE_AVX512_INLINE void AccumulateV512(const float* e, int64_t e_ld, const float* const* v,
                                      int64_t d0, int64_t j_begin, int64_t j_end, float* acc,
                                      int64_t acc_ld) {
  __m512 a[RQ][DD];
  for (int i = 0; i < RQ; ++i) {
    for (int c = 0; c < DD; ++c) a[i][c] = _mm512_loadu_ps(acc + i * acc_ld + 16 * c);
  }
  for (int64_t j = j_begin; j < j_end; ++j) {
    const float* vj = v[j] + d0;
    __m512 vv[DD];
    for (int c = 0; c < DD; ++c) vv[c] = _mm512_loadu_ps(vj + 16 * c);
    for (int i = 0; i < RQ; ++i) {
      const __m512 ej = _mm512_set1_ps(e[j * e_ld + i]);
      for (int c = 0; c < DD; ++c) a[i][c] = _mm512_add_ps(a[i][c], _mm512_mul_ps(ej, vv[c]));
    }
  }
  for (int i = 0; i < RQ; ++i) {
    for (int c = 0; c < DD; ++c) _mm512_storeu_ps(acc + i * acc_ld + 16 * c, a[i][c]);
  }
}

// cpu_kernels::ExpF of 16 lanes: the same operations, lane for lane.
MOE_AVX512_INLINE __m512 Exp16(__m512 x) {
  const __m512 k_hi = _mm512_set1_ps(88.72283935546875f);
  const __m512 k_lo = _mm512_set1_ps(-86.5f);
  const __mmask16 over = _mm512_cmp_ps_mask(x, k_hi, _CMP_GT_OQ);
  const __mmask16 under = _mm512_cmp_ps_mask(x, k_lo, _CMP_LT_OQ);
  // mask_blend(k, a, b) = k ? b : a.
  const __m512 xc = _mm512_mask_blend_ps(over, _mm512_mask_blend_ps(under, x, k_lo), k_hi);
  const __m512 k_round = _mm512_set1_ps(12582912.0f);
  const __m512 n =
      _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), k_round), k_round);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_maskz_slli_epi32(
      0xffff, _mm512_add_epi32(_mm512_maskz_cvttps_epi32(0xffff, n), _mm512_set1_epi32(126)), 23);
  const __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_castsi512_ps(bits)), _mm512_set1_ps(2.0f));
  return _mm512_mask_blend_ps(over, _mm512_mask_blend_ps(under, y, _mm512_setzero_ps()),
                              _mm512_set1_ps(std::numeric_limits<float>::infinity()));
}

// Lanes where lo <= j <= hi.
MOE_AVX512_INLINE __mmask16 Valid16(__m512i lo, __m512i hi, int64_t j) {
  const __m512i jv = _mm512_set1_epi32(static_cast<int32_t>(j));
  return _mm512_cmp_epi32_mask(lo, jv, _MM_CMPINT_LE) &
         _mm512_cmp_epi32_mask(jv, hi, _MM_CMPINT_LE);
}

// SoftmaxColumns8 of attention_tiles.h for 16 lanes (query rows) at once, s[j * ld + lane].
MOE_AVX512_INLINE void SoftmaxColumns16(float* s, int64_t ld, const int32_t* lo, const int32_t* hi,
                                        int64_t j_begin, int64_t j_end, float* m_out, float* sum) {
  const __m512i lo_v = _mm512_loadu_si512(lo);
  const __m512i hi_v = _mm512_loadu_si512(hi);
  // max_ps(x, m) = x > m ? x : m, which is std::max(m, x) = m < x ? x : m (NaN x and ties keep
  // m); lanes outside their positions keep m.
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = j_begin; j <= j_end; ++j) {
    m = _mm512_mask_max_ps(m, Valid16(lo_v, hi_v, j), _mm512_loadu_ps(s + j * ld), m);
  }
  __m512 sv = _mm512_setzero_ps();
  for (int64_t j = j_begin; j <= j_end; ++j) {
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j * ld), m));
    _mm512_storeu_ps(s + j * ld, e);
    sv = _mm512_mask_add_ps(sv, Valid16(lo_v, hi_v, j), sv, e);
  }
  _mm512_storeu_ps(m_out, m);
  _mm512_storeu_ps(sum, sv);
}

}  // namespace cpu_kernels
}  // namespace moe

#endif  // defined(__AVX2__) && defined(__GNUC__)
#endif  // MOE_KERNELS_CPU_ATTENTION_TILES_AVX512_H_
