// Paged GQA attention, one (query token, head) pair per loop iteration: scores, a
// max-subtracted softmax and the weighted V sum, all fp32 in the order backend.h states, one
// rounding at the end. Every pair is computed on its own, so neither the thread count nor the
// other tokens of the batch change its bits. Seq ids, positions and the block table entries that
// will be read are checked before anything is written.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::StoreBf16;

MOE_CPU_INLINE float Load(const float* p) { return *p; }
MOE_CPU_INLINE float Load(const uint16_t* p) { return LoadBf16(*p); }
MOE_CPU_INLINE void Store(float v, float* p) { *p = v; }
MOE_CPU_INLINE void Store(float v, uint16_t* p) { *p = StoreBf16(v); }

// The first position a query at p sees.
int64_t FirstVisible(int64_t p, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
}

// dot(q, k) over 8 lanes: dim d to lane d mod 8, lanes added pairwise.
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
  cpu_kernels::Scratch<float, 2048> score(n);
  const T* q_src = static_cast<const T*>(a.q) + t * a.q_ld + h * hd;
  for (int64_t d = 0; d < hd; ++d) q[d] = Load(q_src + d);

  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    score[j] = a.scale * Dot8(q.data(), k_cache + row_of(lo + j), hd);
    m = std::max(m, score[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    score[j] = cpu_kernels::ExpF(score[j] - m);
    sum += score[j];
  }
  for (int64_t d = 0; d < hd; ++d) acc[d] = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const T* v = v_cache + row_of(lo + j);
    const float e = score[j];
#pragma omp simd
    for (int64_t d = 0; d < hd; ++d) acc[d] += e * Load(v + d);
  }
  T* out = static_cast<T*>(a.out) + t * a.out_ld + h * hd;
  for (int64_t d = 0; d < hd; ++d) Store(acc[d] / sum, out + d);
}

template <typename T>
void AttendAll(const AttentionArgs& a, int threads, int64_t chunk) {
  const int64_t pairs = a.tokens * a.heads;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
  for (int64_t i = 0; i < pairs; ++i) AttendOne<T>(a, i / a.heads, i % a.heads);
}

}  // namespace

absl::Status CpuBackend::RunAttention(const AttentionArgs& args) {
  const int64_t max_positions = args.max_blocks_per_seq * args.block_size;
  int64_t visible = 0;
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int64_t s = args.seq_ids[t];
    if (s < 0 || s >= args.num_seqs) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention: seq_ids[", t, "]=", s, " is outside [0, num_seqs=", args.num_seqs, ")"));
    }
    const int64_t p = args.positions[t];
    if (p < 0 || p >= max_positions) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention: positions[", t, "]=", p,
                       " is outside [0, max_blocks_per_seq * block_size=", max_positions, ")"));
    }
    const int64_t lo = FirstVisible(p, args.sliding_window);
    visible += p - lo + 1;
    for (int64_t b = lo / args.block_size; b <= p / args.block_size; ++b) {
      const int64_t block = args.block_tables[s * args.max_blocks_per_seq + b];
      if (block < 0 || block >= args.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("attention: block_tables[", s, ", ", b, "]=", block,
                         " is outside [0, num_blocks=", args.num_blocks, ")"));
      }
    }
  }
  // ~4 flops per visible position and dim (score and weighted sum).
  const int64_t work = visible * args.heads * args.head_dim * 4;
  const int threads = cpu_kernels::ThreadsFor(num_threads(), work);
  const int64_t chunk = cpu_kernels::ChunkFor(work / (args.tokens * args.heads));
  if (args.dtype == DType::kF32) {
    AttendAll<float>(args, threads, chunk);
  } else {
    AttendAll<uint16_t>(args, threads, chunk);
  }
  return absl::OkStatus();
}

}  // namespace moe
