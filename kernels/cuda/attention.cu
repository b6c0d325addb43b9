// Split-KV attention in backend.h's partitioned order: one thread block per (token, query
// heads, partition of kAttentionPartition positions), then a merge per (token, head).
//   1. PartitionKernel<kHeads>: a block takes up to kHeads query heads of one kv head (1, or
//      kGroupHeads when the blocks are enough to fill the GPU: the heads then share each K / V
//      row read). Thread j scores position j of the partition for every head with the
//      contract's 8-lane dot (the lanes are its own 8 accumulators per head, filled from
//      16-byte loads of the K row, then added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) +
//      (l6 + l7))); m_i is a block max per head (any order gives the same max; fmaxf drops NaN
//      scores as the CPU's compare does, and the sign of a zero m_i cannot change an exp); e_j
//      in parallel; sum_i (thread g for head g) and acc_i[d] are sequential in ascending j (a
//      thread owns two dims of every head's acc_i and loads kVRows V rows ahead of its chains).
//      A query that sees one partition writes out directly (w = 1 exactly, so that is the
//      merged value); the others write (m_i, sum_i, acc_i) to the partials.
//   2. MergeKernel: m = max_i m_i; w_i, sum and acc[d] in ascending i; out = acc / sum.
// The partials hold a fixed number of floats, so the blocks go in as many launches as they
// need; nothing depends on that split, on kHeads, the launch or the other tokens.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

using kernel_util::ExpF;
using kernel_util::FromF32;
using kernel_util::kNoError;
using kernel_util::ToF32;

// One thread per position of a partition.
constexpr int kThreads = static_cast<int>(kAttentionPartition);
constexpr int kWarps = kThreads / 32;
constexpr int kMergeThreads = 128;
// V rows whose loads a thread issues before adding their terms.
constexpr int kVRows = 16;
// Query heads per block when a kv head's heads share the K / V reads.
constexpr int kGroupHeads = 8;
// Blocks (token x kv head x partition slot) from which that pays: measured on H100 with
// Qwen3-30B-A3B's 32 / 4 heads (tools/attention_bench).
constexpr int64_t kGroupedMinBlocks = 512;
constexpr int64_t kMaxSharedBytes = 48 * 1024;
constexpr int64_t kMaxGrid = int64_t{1} << 20;

struct Params {
  const void* q;
  int64_t q_ld;
  const void* k_cache;
  const void* v_cache;
  int64_t tokens;
  int64_t heads;
  int64_t kv_heads;
  int64_t heads_per_kv;
  int64_t head_dim;
  int64_t kv_row;  // kv_heads * head_dim
  int64_t block_size;
  int64_t max_blocks_per_seq;
  const int32_t* block_tables;
  const int32_t* seq_ids;
  const int32_t* positions;
  int64_t sliding_window;
  float scale;
  void* out;
  int64_t out_ld;
  // This launch's (token, head) pairs are item_begin + [0, items), item = t * heads + h; each
  // has `slots` partition slots (blocks), slot s for the query's partition first + s.
  int64_t item_begin;
  int64_t slots;
  float* partials;  // [items, slots, 2 + head_dim]: m_i, sum_i, acc_i
};

__device__ __forceinline__ int64_t FirstVisible(int64_t p, int64_t window) {
  return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- Data errors ---------------------------------------------------------------------------

// atomicMin of the attention.h key of every bad entry, one block per token at a time.
__global__ void CheckAttentionKernel(const int32_t* __restrict__ seq_ids,
                                     const int32_t* __restrict__ positions,
                                     const int32_t* __restrict__ block_tables, int64_t tokens,
                                     int64_t num_seqs, int64_t max_blocks_per_seq,
                                     int64_t block_size, int64_t num_blocks, int64_t window,
                                     unsigned long long* __restrict__ error) {
  const unsigned long long stride = static_cast<unsigned long long>(max_blocks_per_seq) + 2;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const unsigned long long key = static_cast<unsigned long long>(t) * stride;
    const int64_t s = seq_ids[t];
    if (s < 0 || s >= num_seqs) {
      if (threadIdx.x == 0) atomicMin(error, key);
      continue;
    }
    const int64_t p = positions[t];
    if (p < 0 || p >= max_blocks_per_seq * block_size) {
      if (threadIdx.x == 0) atomicMin(error, key + 1);
      continue;
    }
    const int32_t* table = block_tables + s * max_blocks_per_seq;
    for (int64_t b = FirstVisible(p, window) / block_size + threadIdx.x; b <= p / block_size;
         b += blockDim.x) {
      const int64_t block = table[b];
      if (block < 0 || block >= num_blocks) {
        atomicMin(error, key + 2 + static_cast<unsigned long long>(b));
        break;  // later b of this thread are larger
      }
    }
  }
}

// error[1] for the entry error[0] names (attention.h).
__device__ unsigned long long ErrorValue(const Params& p, unsigned long long key) {
  const unsigned long long stride = static_cast<unsigned long long>(p.max_blocks_per_seq) + 2;
  const int64_t t = static_cast<int64_t>(key / stride);
  const int64_t c = static_cast<int64_t>(key % stride);
  if (c == 0) return static_cast<unsigned long long>(static_cast<int64_t>(p.seq_ids[t]));
  if (c == 1) return static_cast<unsigned long long>(static_cast<int64_t>(p.positions[t]));
  const int32_t s = p.seq_ids[t];
  const int32_t block = p.block_tables[s * p.max_blocks_per_seq + (c - 2)];
  return (static_cast<unsigned long long>(static_cast<uint32_t>(s)) << 32) |
         static_cast<uint32_t>(block);
}

// ---- Attention -----------------------------------------------------------------------------

// The partitions [first, last] a query at `pos` sees.
__device__ __forceinline__ void Partitions(const Params& p, int64_t t, int64_t* first,
                                           int64_t* last, int64_t* lo, int64_t* pos) {
  *pos = p.positions[t];
  *lo = FirstVisible(*pos, p.sliding_window);
  *first = *lo / kAttentionPartition;
  *last = *pos / kAttentionPartition;
}

// 8 consecutive elements from k (16-byte aligned when kVec) as floats.
template <bool kVec>
__device__ __forceinline__ void Load8(const float* k, float* v) {
  if (kVec) {
    const float4 a = reinterpret_cast<const float4*>(k)[0];
    const float4 b = reinterpret_cast<const float4*>(k)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int l = 0; l < 8; ++l) v[l] = k[l];
  }
}
template <bool kVec>
__device__ __forceinline__ void Load8(const bf16* k, float* v) {
  if (kVec) {
    const uint4 a = *reinterpret_cast<const uint4*>(k);
    const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int l = 0; l < 8; ++l) v[l] = ToF32(k[l]);
  }
}

// Elements d and d + 1 of a row (d + 1 only when `two`; one load of both when kPair).
template <bool kPair>
__device__ __forceinline__ void LoadPair(const float* v, bool two, float* a, float* b) {
  if (kPair) {
    const float2 x = *reinterpret_cast<const float2*>(v);
    *a = x.x, *b = x.y;
  } else {
    *a = v[0];
    *b = two ? v[1] : 0.0f;
  }
}
template <bool kPair>
__device__ __forceinline__ void LoadPair(const bf16* v, bool two, float* a, float* b) {
  if (kPair) {
    const uint32_t x = *reinterpret_cast<const uint32_t*>(v);
    *a = __uint_as_float(x << 16), *b = __uint_as_float(x & 0xffff0000u);
  } else {
    *a = ToF32(v[0]);
    *b = two ? ToF32(v[1]) : 0.0f;
  }
}

// scale * the contract's dot of query rows q_s[g] (g < heads) and the K row k, into score[g]:
// lane l sums dims l, l + 8, ... in order, each K value loaded once for all the rows.
template <int kHeads, bool kVec, typename T>
__device__ __forceinline__ void Scores(const float* q_s, int64_t hd, int heads, const T* k,
                                       float scale, float* score) {
  float lane[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int l = 0; l < 8; ++l) lane[g][l] = 0.0f;
  }
  int64_t d = 0;
  for (; d + 8 <= hd; d += 8) {
    float kv[8];
    Load8<kVec>(k + d, kv);
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      if (g < heads) {
#pragma unroll
        for (int l = 0; l < 8; ++l) {
          lane[g][l] = __fadd_rn(lane[g][l], __fmul_rn(q_s[g * hd + d + l], kv[l]));
        }
      }
    }
  }
  if (d < hd) {  // a last, partial step: dim d + l to lane l (indices fixed, so registers)
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      if (d + l < hd) {
        const float kd = ToF32(k[d + l]);
#pragma unroll
        for (int g = 0; g < kHeads; ++g) {
          if (g < heads) lane[g][l] = __fadd_rn(lane[g][l], __fmul_rn(q_s[g * hd + d + l], kd));
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const float dot =
        __fadd_rn(__fadd_rn(__fadd_rn(lane[g][0], lane[g][1]), __fadd_rn(lane[g][2], lane[g][3])),
                  __fadd_rn(__fadd_rn(lane[g][4], lane[g][5]), __fadd_rn(lane[g][6], lane[g][7])));
    score[g] = __fmul_rn(scale, dot);
  }
}

// Where a block's (token, query heads, partition) are: blocks run over units (t, kv head, head
// block), each with p.slots partition slots; a unit holds query heads h0 .. h0 + count - 1 of
// one kv head (kHeads of them, fewer in a group's last unit).
template <int kHeads>
struct Unit {
  int64_t t, kvh, h0, slot;
  int count;
  __device__ Unit(const Params& p, int64_t unit_begin, int64_t block) {
    const int64_t head_blocks = (p.heads_per_kv + kHeads - 1) / kHeads;
    const int64_t u = unit_begin + block / p.slots;
    slot = block % p.slots;
    t = u / (p.kv_heads * head_blocks);
    const int64_t rem = u % (p.kv_heads * head_blocks);
    kvh = rem / head_blocks;
    const int64_t first = (rem % head_blocks) * kHeads;
    h0 = kvh * p.heads_per_kv + first;
    count = static_cast<int>(Min64(kHeads, p.heads_per_kv - first));
  }
};

// One partition of `count` query heads of one kv head for one token: scores, m_i, e_j, sum_i
// and acc_i (see the top of the file), every K and V row read once for all the heads. kVec:
// 16-byte loads of K rows (head_dim a multiple of 8, aligned cache); kPair: 2-element loads of
// V (head_dim even).
template <int kHeads, typename T, bool kVec, bool kPair>
__global__ void __launch_bounds__(kThreads)
    PartitionKernel(const Params p, int64_t unit_begin, unsigned long long* error) {
  const unsigned long long first_error = error[0];
  if (first_error != kNoError) {
    if (blockIdx.x == 0 && threadIdx.x == 0) error[1] = ErrorValue(p, first_error);
    return;
  }
  const Unit<kHeads> u(p, unit_begin, blockIdx.x);
  int64_t first, last, lo, pos;
  Partitions(p, u.t, &first, &last, &lo, &pos);
  const int64_t part = first + u.slot;
  if (part > last) return;
  const int64_t j0 = part * kAttentionPartition > lo ? part * kAttentionPartition : lo;
  const int n = static_cast<int>(Min64(pos, part * kAttentionPartition + kThreads - 1) - j0 + 1);

  __shared__ int64_t off_s[kThreads];
  __shared__ float e_s[kHeads][kThreads];
  __shared__ float red[kWarps][kHeads];
  extern __shared__ float q_s[];  // [count][head_dim]
  const int tid = threadIdx.x;
  const int64_t hd = p.head_dim;
  const T* k_cache = static_cast<const T*>(p.k_cache) + u.kvh * hd;
  const T* v_cache = static_cast<const T*>(p.v_cache) + u.kvh * hd;
  const T* q = static_cast<const T*>(p.q) + u.t * p.q_ld + u.h0 * hd;
  for (int64_t i = tid; i < u.count * hd; i += kThreads) q_s[i] = ToF32(q[i]);
  __syncthreads();

  float score[kHeads];
  float m[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) m[g] = __uint_as_float(0xff800000u);  // -inf
  if (tid < n) {
    const int64_t j = j0 + tid;
    const int32_t* table = p.block_tables + p.seq_ids[u.t] * p.max_blocks_per_seq;
    const int64_t o =
        (static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size) *
        p.kv_row;
    off_s[tid] = o;
    Scores<kHeads, kVec>(q_s, hd, u.count, k_cache + o, p.scale, score);
#pragma unroll
    for (int g = 0; g < kHeads; ++g) m[g] = fmaxf(m[g], score[g]);
  }
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    for (int x = 16; x >= 1; x /= 2) m[g] = fmaxf(m[g], __shfl_xor_sync(0xffffffffu, m[g], x));
    if (tid % 32 == 0) red[tid / 32][g] = m[g];
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = red[0][g];
    for (int w = 1; w < kWarps; ++w) m[g] = fmaxf(m[g], red[w][g]);
    if (tid < n && g < u.count) e_s[g][tid] = ExpF(__fsub_rn(score[g], m[g]));
  }
  __syncthreads();

  const bool single = first == last;
  const int64_t item0 = u.t * p.heads + u.h0 - p.item_begin;  // this unit's first partial
  // Thread g adds head g's e_j in ascending j (the heads' chains side by side).
  __shared__ float sum_s[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    if (tid != g || g >= u.count) continue;
    float sum = 0.0f;
    for (int jj = 0; jj < n; ++jj) sum = __fadd_rn(sum, e_s[g][jj]);
    sum_s[g] = sum;
    if (!single) {
      float* partial = p.partials + ((item0 + g) * p.slots + u.slot) * (hd + 2);
      partial[0] = m[g];
      partial[1] = sum;
    }
  }
  __syncthreads();  // the outputs below divide by sum_s
  for (int64_t d = 2 * tid; d < hd; d += 2 * kThreads) {
    const bool two = d + 1 < hd;
    float a0[kHeads], a1[kHeads];
#pragma unroll
    for (int g = 0; g < kHeads; ++g) a0[g] = a1[g] = 0.0f;
    for (int j = 0; j < n; j += kVRows) {
      float v0[kVRows], v1[kVRows];
#pragma unroll
      for (int x = 0; x < kVRows; ++x) {
        if (j + x < n) LoadPair<kPair>(v_cache + off_s[j + x] + d, two, &v0[x], &v1[x]);
      }
#pragma unroll
      for (int x = 0; x < kVRows; ++x) {
        if (j + x < n) {
#pragma unroll
          for (int g = 0; g < kHeads; ++g) {
            if (g < u.count) {
              a0[g] = __fadd_rn(a0[g], __fmul_rn(e_s[g][j + x], v0[x]));
              a1[g] = __fadd_rn(a1[g], __fmul_rn(e_s[g][j + x], v1[x]));
            }
          }
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      if (g >= u.count) continue;
      if (single) {
        T* out = static_cast<T*>(p.out) + u.t * p.out_ld + (u.h0 + g) * hd;
        out[d] = FromF32<T>(__fdiv_rn(a0[g], sum_s[g]));
        if (two) out[d + 1] = FromF32<T>(__fdiv_rn(a1[g], sum_s[g]));
      } else {
        float* partial = p.partials + ((item0 + g) * p.slots + u.slot) * (hd + 2);
        partial[2 + d] = a0[g];
        if (two) partial[3 + d] = a1[g];
      }
    }
  }
}

// One (token, head) that sees more than one partition: the merge in ascending i.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    MergeKernel(const Params p, const unsigned long long* error) {
  if (error[0] != kNoError) return;
  const int64_t local = blockIdx.x;
  const int64_t item = p.item_begin + local;
  const int64_t t = item / p.heads;
  const int64_t h = item % p.heads;
  int64_t first, last, lo, pos;
  Partitions(p, t, &first, &last, &lo, &pos);
  if (first == last) return;  // written by PartitionKernel
  const int64_t hd = p.head_dim;
  const int64_t parts = last - first + 1;
  const float* partial = p.partials + local * p.slots * (hd + 2);
  float m = __uint_as_float(0xff800000u);
  for (int64_t i = 0; i < parts; ++i) m = fmaxf(m, partial[i * (hd + 2)]);
  T* out = static_cast<T*>(p.out) + t * p.out_ld + h * hd;
  for (int64_t d = threadIdx.x; d < hd; d += kMergeThreads) {
    float sum = 0.0f, acc = 0.0f;
    for (int64_t i = 0; i < parts; ++i) {
      const float* part = partial + i * (hd + 2);
      const float w = ExpF(__fsub_rn(part[0], m));
      sum = __fadd_rn(sum, __fmul_rn(w, part[1]));
      acc = __fadd_rn(acc, __fmul_rn(w, part[2 + d]));
    }
    out[d] = FromF32<T>(__fdiv_rn(acc, sum));
  }
}

template <int kHeads, typename T, bool kVec, bool kPair>
absl::Status LaunchPartitions(const Params& p, int64_t unit_begin, int64_t units, int64_t items,
                              uint64_t* error, cudaStream_t stream) {
  auto* words = reinterpret_cast<unsigned long long*>(error);
  const size_t q_bytes = static_cast<size_t>(kHeads * p.head_dim) * sizeof(float);
  PartitionKernel<kHeads, T, kVec, kPair>
      <<<static_cast<unsigned>(units * p.slots), kThreads, q_bytes, stream>>>(p, unit_begin,
                                                                            words);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (p.slots > 1) {
    MergeKernel<T><<<static_cast<unsigned>(items), kMergeThreads, 0, stream>>>(p, words);
    MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

template <int kHeads, typename T>
absl::Status LaunchTyped(const Params& p, int64_t unit_begin, int64_t units, int64_t items,
                         bool vec, bool pair, uint64_t* error, cudaStream_t stream) {
  if (vec) return LaunchPartitions<kHeads, T, true, true>(p, unit_begin, units, items, error, stream);
  if (pair) return LaunchPartitions<kHeads, T, false, true>(p, unit_begin, units, items, error, stream);
  return LaunchPartitions<kHeads, T, false, false>(p, unit_begin, units, items, error, stream);
}

// The blocks of all units in as many launches as the partials need, kHeads query heads a unit.
template <int kHeads>
absl::Status LaunchUnits(Params p, DType dtype, int64_t partial_floats, bool vec, bool pair,
                         uint64_t* error, cudaStream_t stream) {
  const int64_t head_blocks = (p.heads_per_kv + kHeads - 1) / kHeads;
  const int64_t units_per_token = p.kv_heads * head_blocks;
  const int64_t total = p.tokens * units_per_token;
  const int64_t unit_floats = kHeads * p.slots * (p.head_dim + 2);
  int64_t per_launch = p.slots > 1 ? partial_floats / unit_floats : total;
  per_launch = std::max<int64_t>(1, std::min(per_launch, (int64_t{1} << 31) / p.slots - 1));
  // The first (token, head) item of unit u; the units of a range cover consecutive items.
  auto first_item = [&](int64_t u) {
    const int64_t t = u / units_per_token, rem = u % units_per_token;
    return t * p.heads + (rem / head_blocks) * p.heads_per_kv + (rem % head_blocks) * kHeads;
  };
  for (int64_t begin = 0; begin < total; begin += per_launch) {
    const int64_t units = std::min(per_launch, total - begin);
    p.item_begin = first_item(begin);
    const int64_t items =
        (begin + units == total ? p.tokens * p.heads : first_item(begin + units)) - p.item_begin;
    const absl::Status launched =
        dtype == DType::kF32
            ? LaunchTyped<kHeads, float>(p, begin, units, items, vec, pair, error, stream)
            : LaunchTyped<kHeads, bf16>(p, begin, units, items, vec, pair, error, stream);
    MOE_RETURN_IF_ERROR(launched);
  }
  return absl::OkStatus();
}

}  // namespace

int64_t AttentionPartitionSlots(const AttentionArgs& args) {
  const int64_t max_positions = args.max_blocks_per_seq * args.block_size;
  int64_t slots = (max_positions + kAttentionPartition - 1) / kAttentionPartition;
  if (args.sliding_window > 0) {
    // A run of at most `window` positions starting anywhere in a partition.
    slots = std::min(slots, (args.sliding_window + kAttentionPartition - 2) / kAttentionPartition + 1);
  }
  return std::max<int64_t>(slots, 1);
}

absl::Status LaunchAttention(const AttentionArgs& args, float* partials, int64_t partial_floats,
                             uint64_t* error, cudaStream_t stream, AttentionKernel kernel) {
  if (error == nullptr) {
    return absl::InvalidArgumentError("attention (cuda): error is null");
  }
  const int64_t slots = AttentionPartitionSlots(args);
  const int64_t item_floats = slots * (args.head_dim + 2);
  if (slots > 1 && (partials == nullptr || partial_floats < item_floats)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention (cuda): the partials hold ", partials == nullptr ? 0 : partial_floats,
        " floats; one (token, head) of ", slots, " partitions of head_dim=", args.head_dim,
        " needs ", item_floats));
  }
  // The query rows in shared memory, with 4 KiB for the kernels' own arrays.
  const int64_t q_bytes = args.head_dim * static_cast<int64_t>(sizeof(float));
  const bool group_fits = kGroupHeads * q_bytes + 4096 <= kMaxSharedBytes;
  if (q_bytes + 4096 > kMaxSharedBytes) {
    return absl::UnimplementedError(absl::StrCat("attention (cuda): head_dim=", args.head_dim,
                                                 " needs more than ", kMaxSharedBytes,
                                                 " bytes of shared memory"));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, 2 * sizeof(uint64_t), stream));
  if (args.tokens <= 0) return absl::OkStatus();
  constexpr int kCheckThreads = 128;
  CheckAttentionKernel<<<static_cast<unsigned>(std::min(args.tokens, kMaxGrid)), kCheckThreads, 0,
                         stream>>>(args.seq_ids, args.positions, args.block_tables, args.tokens,
                                   args.num_seqs, args.max_blocks_per_seq, args.block_size,
                                   args.num_blocks, args.sliding_window,
                                   reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());

  Params p;
  p.q = args.q;
  p.q_ld = args.q_ld;
  p.k_cache = args.k_cache;
  p.v_cache = args.v_cache;
  p.tokens = args.tokens;
  p.heads = args.heads;
  p.kv_heads = args.kv_heads;
  p.heads_per_kv = args.heads / args.kv_heads;
  p.head_dim = args.head_dim;
  p.kv_row = args.kv_heads * args.head_dim;
  p.block_size = args.block_size;
  p.max_blocks_per_seq = args.max_blocks_per_seq;
  p.block_tables = args.block_tables;
  p.seq_ids = args.seq_ids;
  p.positions = args.positions;
  p.sliding_window = args.sliding_window;
  p.scale = args.scale;
  p.out = args.out;
  p.out_ld = args.out_ld;
  p.slots = slots;
  p.partials = partials;
  const bool aligned = reinterpret_cast<uintptr_t>(args.k_cache) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.v_cache) % 16 == 0;
  const bool vec = aligned && args.head_dim % 8 == 0;
  const bool pair = aligned && args.head_dim % 2 == 0;
  // Query heads of one kv head share each K / V row read when they fill the GPU anyway (and one
  // token's group fits the partials); a decode step of a few sequences runs a block per head.
  const bool grouped = kernel == AttentionKernel::kPerKvHead ||
                       (kernel == AttentionKernel::kAuto && p.heads_per_kv > 1 &&
                        args.tokens * args.kv_heads * slots >= kGroupedMinBlocks);
  if (grouped && group_fits && (slots == 1 || partial_floats >= kGroupHeads * item_floats)) {
    return LaunchUnits<kGroupHeads>(p, args.dtype, partial_floats, vec, pair, error, stream);
  }
  return LaunchUnits<1>(p, args.dtype, partial_floats, vec, pair, error, stream);

}

absl::Status AttentionDataError(const AttentionArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kNoError) return absl::OkStatus();
  const uint64_t stride = static_cast<uint64_t>(args.max_blocks_per_seq) + 2;
  const uint64_t t = host_error[0] / stride;
  const uint64_t c = host_error[0] % stride;
  const int64_t value = static_cast<int64_t>(host_error[1]);
  if (c == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention: seq_ids[", t, "]=", value, " is outside [0, num_seqs=", args.num_seqs, ")"));
  }
  if (c == 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention: positions[", t, "]=", value, " is outside [0, max_blocks_per_seq * block_size=",
        args.max_blocks_per_seq * args.block_size, ")"));
  }
  const int32_t s = static_cast<int32_t>(host_error[1] >> 32);
  const int32_t block = static_cast<int32_t>(static_cast<uint32_t>(host_error[1]));
  return absl::InvalidArgumentError(
      absl::StrCat("attention: block_tables[", s, ", ", c - 2, "]=", block,
                   " is outside [0, num_blocks=", args.num_blocks, ")"));
}

absl::Status FinishAttention(const AttentionArgs& args, const uint64_t* error,
                             cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return AttentionDataError(args, host);
}

}  // namespace moe::cuda
