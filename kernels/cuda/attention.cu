// One thread block per (token, head), computing exactly backend.h's order for that query:
//   1. scores: 8 threads per position, thread l the sequential lane sum of dims l, l + 8, ...
//      (a product, then a sum), the lanes added by three xor shuffles, which give
//      ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) since fp32 addition commutes;
//   2. m: any reduction order gives the same max (fmaxf drops NaN scores as the CPU's
//      compare does, and the sign of a zero m cannot change score - m's exp);
//   3. e_j = ExpF(score_j - m) in parallel; sum and acc[d] are sequential in ascending j: every
//      thread keeps the (same) sum, thread d owns acc[d] and walks the positions in order.
// Scores live in shared memory a chunk of positions at a time; a query seeing more positions
// than a chunk computes its scores twice (the max must be known before the first exp).
//
// Next steps for speed (the order is fixed, so flash-decoding's split over positions, which
// adds partial sums in another order, is not allowed; parallelism comes from tokens x heads
// and from dims):
// - one block per (token, kv head) so the heads of a group share each K / V row read;
//   likewise the tokens of a prefill chunk (as the CPU's groups) for K / V reuse in shared
//   memory;
// - 16-byte vector loads of K / V rows, K rows staged through shared memory;
// - several dims per thread in registers (head_dim 128 with 32 or 64 threads) and more blocks
//   per SM; a larger score chunk (opt-in shared memory) to avoid recomputing long contexts;
// - a per-sequence check of block_tables instead of per token.
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

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kDotLanes = 8;
constexpr int kGroups = kThreads / kDotLanes;  // positions scored at once
constexpr int64_t kMaxSharedBytes = 48 * 1024;
constexpr int64_t kMaxGrid = int64_t{1} << 20;

struct Params {
  const void* q;
  int64_t q_ld;
  const void* k_cache;
  const void* v_cache;
  int64_t tokens;
  int64_t heads;
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
  int64_t chunk;
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

// Scores of positions [first, first + n) into sc[0, n), and each position's element offset
// of its K / V row (of this kv head) into off; the max of the scores into *m.
template <typename T>
__device__ __forceinline__ void ScoreChunk(const Params& p, const T* __restrict__ k_cache,
                                           const int32_t* __restrict__ table, int64_t first,
                                           int64_t n, const float* q_s, float* sc, int64_t* off,
                                           float* m) {
  const int group = threadIdx.x / kDotLanes;
  const int lane = threadIdx.x % kDotLanes;
  for (int64_t base = 0; base < n; base += kGroups) {
    const int64_t jj = base + group;
    const bool active = jj < n;
    float l = 0.0f;
    int64_t o = 0;
    if (active) {
      const int64_t j = first + jj;
      o = (static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size) *
          p.kv_row;
      const T* k = k_cache + o;
      for (int64_t d = lane; d < p.head_dim; d += kDotLanes) {
        l = __fadd_rn(l, __fmul_rn(q_s[d], ToF32(k[d])));
      }
    }
    l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 1));
    l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 2));
    l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 4));
    if (active) {
      const float score = __fmul_rn(p.scale, l);
      *m = fmaxf(*m, score);
      if (lane == 0) {
        sc[jj] = score;
        off[jj] = o;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    AttentionKernel(const Params p, unsigned long long* error) {
  const unsigned long long first_error = error[0];
  if (first_error != kNoError) {
    if (blockIdx.x == 0 && threadIdx.x == 0) error[1] = ErrorValue(p, first_error);
    return;
  }
  extern __shared__ int64_t shared[];
  int64_t* off = shared;                                // [chunk]
  float* sc = reinterpret_cast<float*>(off + p.chunk);  // [chunk]
  float* q_s = sc + p.chunk;                            // [head_dim]
  float* acc_s = q_s + p.head_dim;                      // [head_dim]
  float* red = acc_s + p.head_dim;                      // [kWarps]
  const int tid = threadIdx.x;
  const int64_t hd = p.head_dim;
  const T* q = static_cast<const T*>(p.q);
  T* out = static_cast<T*>(p.out);
  for (int64_t item = blockIdx.x; item < p.tokens * p.heads; item += gridDim.x) {
    const int64_t t = item / p.heads;
    const int64_t h = item % p.heads;
    const int64_t pos = p.positions[t];
    const int64_t lo = FirstVisible(pos, p.sliding_window);
    const int64_t span = pos - lo + 1;
    const int32_t* table = p.block_tables + p.seq_ids[t] * p.max_blocks_per_seq;
    const int64_t kv_offset = (h / p.heads_per_kv) * hd;
    const T* k_cache = static_cast<const T*>(p.k_cache) + kv_offset;
    const T* v_cache = static_cast<const T*>(p.v_cache) + kv_offset;

    __syncthreads();  // the previous item's reads of shared memory are done
    for (int64_t d = tid; d < hd; d += kThreads) {
      q_s[d] = ToF32(q[t * p.q_ld + h * hd + d]);
      acc_s[d] = 0.0f;
    }
    __syncthreads();

    float m = __uint_as_float(0xff800000u);  // -inf
    for (int64_t c0 = 0; c0 < span; c0 += p.chunk) {
      ScoreChunk(p, k_cache, table, lo + c0, Min64(p.chunk, span - c0), q_s, sc, off, &m);
    }
    for (int x = 16; x >= 1; x /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, x));
    if (tid % 32 == 0) red[tid / 32] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < kWarps; ++w) m = fmaxf(m, red[w]);

    const bool recompute = span > p.chunk;
    float sum = 0.0f;
    for (int64_t c0 = 0; c0 < span; c0 += p.chunk) {
      const int64_t n = Min64(p.chunk, span - c0);
      if (recompute) {
        __syncthreads();  // the previous chunk's weights are read
        float unused = 0.0f;
        ScoreChunk(p, k_cache, table, lo + c0, n, q_s, sc, off, &unused);
      }
      __syncthreads();
      for (int64_t jj = tid; jj < n; jj += kThreads) sc[jj] = ExpF(__fsub_rn(sc[jj], m));
      __syncthreads();
      for (int64_t jj = 0; jj < n; ++jj) sum = __fadd_rn(sum, sc[jj]);
      for (int64_t d = tid; d < hd; d += kThreads) {
        float a = acc_s[d];
        for (int64_t jj = 0; jj < n; ++jj) {
          a = __fadd_rn(a, __fmul_rn(sc[jj], ToF32(v_cache[off[jj] + d])));
        }
        acc_s[d] = a;
      }
    }
    for (int64_t d = tid; d < hd; d += kThreads) {
      out[t * p.out_ld + h * hd + d] = FromF32<T>(__fdiv_rn(acc_s[d], sum));
    }
  }
}

template <typename T>
absl::Status LaunchAttentionKernel(const Params& p, size_t shared_bytes, uint64_t* error,
                                   cudaStream_t stream) {
  const int64_t items = p.tokens * p.heads;
  AttentionKernel<T>
      <<<static_cast<unsigned>(std::min(items, kMaxGrid)), kThreads, shared_bytes, stream>>>(
          p, reinterpret_cast<unsigned long long*>(error));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchAttentionChunked(const AttentionArgs& args, int64_t score_chunk, uint64_t* error,
                                    cudaStream_t stream) {
  if (error == nullptr) {
    return absl::InvalidArgumentError("attention (cuda): error is null");
  }
  if (score_chunk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention (cuda): score_chunk=", score_chunk, " is less than 1"));
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

  // No query sees more than max_blocks_per_seq * block_size positions, nor more than the window.
  int64_t chunk = std::min(score_chunk, args.max_blocks_per_seq * args.block_size);
  if (args.sliding_window > 0) chunk = std::min(chunk, args.sliding_window);
  const int64_t fixed_bytes = (2 * args.head_dim + kWarps) * static_cast<int64_t>(sizeof(float));
  const int64_t per_position = sizeof(int64_t) + sizeof(float);
  chunk = std::min(chunk, (kMaxSharedBytes - fixed_bytes) / per_position);
  if (chunk < 1) {
    return absl::UnimplementedError(absl::StrCat("attention (cuda): head_dim=", args.head_dim,
                                                 " needs more than ", kMaxSharedBytes,
                                                 " bytes of shared memory"));
  }
  Params p;
  p.q = args.q;
  p.q_ld = args.q_ld;
  p.k_cache = args.k_cache;
  p.v_cache = args.v_cache;
  p.tokens = args.tokens;
  p.heads = args.heads;
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
  p.chunk = chunk;
  const size_t shared_bytes = static_cast<size_t>(chunk * per_position + fixed_bytes);
  return args.dtype == DType::kF32 ? LaunchAttentionKernel<float>(p, shared_bytes, error, stream)
                                   : LaunchAttentionKernel<bf16>(p, shared_bytes, error, stream);
}

absl::Status LaunchAttention(const AttentionArgs& args, uint64_t* error, cudaStream_t stream) {
  return LaunchAttentionChunked(args, kAttentionScoreChunk, error, stream);
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
