// Four stages on the stream, one block per row in each row stage:
//   CheckInitKernel: z = (double)x and the data-error check (first bad row, first bad column).
//   PenaltyKernel (per chunk of seen ids): z[id] from the original logit, so repeats count once.
//   RowKernel: greedy argmax, or z /= temperature, top-k, the max m, and for top-p the CPU's
//     ascending-id sum of exp(z - m) plus the (descending z, ascending id) sort keys.
//   cub's segmented radix sort (stable, descending) of the top-p rows' keys, then FinishKernel:
//     the top-p prefix walk, min-p, the final softmax, the draw and the logprobs.
// top-k's threshold is the exact top_k-th largest z: a radix select on the 64-bit order of
// doubles (-0 as +0, as the CPU's comparisons see them), 8 bits a round, integer histograms. Every fp64 sum runs
// in the CPU's order: the chunked sums of backend.h with a thread per chunk, the walks on one
// thread over values the block stages through shared memory.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/cuda/sample.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

using kernel_util::kNoError;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kCheckThreads = 256;
constexpr size_t kAlign = 256;
constexpr size_t kCubTempBytes = size_t{1} << 20;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr uint64_t kSignBit = 0x8000000000000000ull;

struct RowState {
  double m;           // max z after top-k
  double sum;         // top-p: sum of exp(z - m) over the kept tokens, ascending id
  int32_t greedy_id;  // >= 0 for a greedy row
  int32_t pad;
};

struct Layout {
  SamplingParams* params;
  int64_t* seen_offsets;
  int* seg_begin;
  int* seg_end;
  RowState* state;
  double* z;
  uint64_t* keys[2];
  int32_t* ids[2];
  int32_t* seen;
  void* cub_temp;
};

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Carves the workspace from `base` (aligned to kAlign); returns the bytes used from an
// unaligned base, so Carve(nullptr, ...) is SampleWorkspaceBytes.
size_t Carve(char* base, int64_t rows, int64_t vocab, Layout* out) {
  const size_t r = static_cast<size_t>(rows);
  const size_t rv = r * static_cast<size_t>(vocab);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* p = base + off;
    off += AlignUp(bytes);
    return p;
  };
  Layout l;
  l.params = reinterpret_cast<SamplingParams*>(take(r * sizeof(SamplingParams)));
  l.seen_offsets = reinterpret_cast<int64_t*>(take((r + 1) * sizeof(int64_t)));
  l.seg_begin = reinterpret_cast<int*>(take(r * sizeof(int)));
  l.seg_end = reinterpret_cast<int*>(take(r * sizeof(int)));
  l.state = reinterpret_cast<RowState*>(take(r * sizeof(RowState)));
  l.z = reinterpret_cast<double*>(take(rv * sizeof(double)));
  l.keys[0] = reinterpret_cast<uint64_t*>(take(rv * sizeof(uint64_t)));
  l.keys[1] = reinterpret_cast<uint64_t*>(take(rv * sizeof(uint64_t)));
  l.ids[0] = reinterpret_cast<int32_t*>(take(rv * sizeof(int32_t)));
  l.ids[1] = reinterpret_cast<int32_t*>(take(rv * sizeof(int32_t)));
  l.seen = reinterpret_cast<int32_t*>(take(kSampleSeenChunk * sizeof(int32_t)));
  l.cub_temp = take(kCubTempBytes);
  if (out != nullptr) *out = l;
  return off + kAlign;
}

// ---- device helpers ------------------------------------------------------------------------

constexpr double kNegInfD = -__builtin_huge_val();

__device__ __forceinline__ uint64_t Mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// SampleUniform of kernels/backend.h.
__device__ __forceinline__ double Uniform(uint64_t seed, uint64_t step) {
  const uint64_t h =
      Mix64(Mix64(seed + 0x9e3779b97f4a7c15ull) ^ Mix64(step + 0x632be59bd9b4e019ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Unsigned order of doubles (no NaN here), -0 as +0.
__device__ __forceinline__ unsigned long long OrderKey(double z) {
  const unsigned long long u =
      z == 0.0 ? 0ull : static_cast<unsigned long long>(__double_as_longlong(z));
  return (u & kSignBit) ? ~u : (u | kSignBit);
}
__device__ __forceinline__ double KeyValue(unsigned long long k) {
  const unsigned long long u = (k & kSignBit) ? (k & ~kSignBit) : ~k;
  return __longlong_as_double(static_cast<long long>(u));
}

struct MaxOp {
  __device__ double operator()(double a, double b) const { return a < b ? b : a; }
};
struct MinI64 {
  __device__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};
struct MaxI64 {
  __device__ long long operator()(long long a, long long b) const { return a < b ? b : a; }
};
struct SumI64 {
  __device__ long long operator()(long long a, long long b) const { return a + b; }
};

// Reduction over the block (blockDim.x = kThreads or kCheckThreads); every thread gets the
// result. `shared` holds one T per warp.
template <typename T, typename Op>
__device__ T BlockReduce(T v, Op op, T* shared) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int w = 1; w < warps; ++w) r = op(r, shared[w]);
  __syncthreads();
  return r;
}

// The CPU's sequential fp64 sums and walks run on thread 0 in the CPU's order; what made them
// slow on a GPU is one thread waiting for each global load. So the block first copies a chunk
// of the values into shared memory (all threads, coalesced), then thread 0 runs its loop over
// the chunk; the arithmetic and its order are unchanged.
constexpr int kStage = 4096;  // doubles per chunk: 32 KiB of shared memory
// The chunk sums of a row sit in a stage buffer.
constexpr int64_t kMaxSampleVocab = kStage * kSampleChunk;

// Thread 0 calls step(i, value(i)) for i = 0, 1, ... < n in order until step returns true;
// every thread of the block calls this, and every thread gets whether a step returned true.
// value(i) runs on any thread, when i's chunk is staged.
template <typename Value, typename Step>
__device__ bool StagedWalk(int64_t n, double* stage, Value&& value, Step&& step) {
  __shared__ int stopped;
  for (int64_t c0 = 0; c0 < n; c0 += kStage) {
    const int len = static_cast<int>(n - c0 < kStage ? n - c0 : kStage);
    for (int i = static_cast<int>(threadIdx.x); i < len; i += static_cast<int>(blockDim.x)) {
      stage[i] = value(c0 + i);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // Eight shared loads issued before their eight steps: the steps' fp64 chain, not the
      // loads' latency, sets the pace.
      int stop = 0;
      for (int i0 = 0; i0 < len && !stop; i0 += 8) {
        double v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = i0 + j < len ? stage[i0 + j] : 0.0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (!stop && i0 + j < len && step(c0 + i0 + j, v[j])) stop = 1;
        }
      }
      stopped = stop;
    }
    __syncthreads();
    const bool stop = stopped != 0;
    __syncthreads();  // everyone has read `stopped` (and thread 0 the stage) before the next chunk
    if (stop) return true;
  }
  return false;
}

// backend.h's chunked sum of term(v) for v in [0, n): thread t adds chunks t, t + blockDim.x,
// ... (each in ascending id from 0.0) into chunk_sums[], then thread 0 adds the chunk sums in
// order; every thread of the block calls this and gets the total. n <= kStage * kSampleChunk.
template <typename Term>
__device__ double ChunkedSum(int64_t n, double* chunk_sums, Term&& term) {
  __shared__ double total;
  const int64_t chunks = (n + kSampleChunk - 1) / kSampleChunk;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int64_t end = (c + 1) * kSampleChunk < n ? (c + 1) * kSampleChunk : n;
    double sum = 0.0;
#pragma unroll 8
    for (int64_t v = c * kSampleChunk; v < end; ++v) sum += term(v);
    chunk_sums[c] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int64_t c = 0; c < chunks; ++c) t += chunk_sums[c];
    total = t;
  }
  __syncthreads();
  const double result = total;
  __syncthreads();  // read by all before another call writes it
  return result;
}

// The sum of v over the threads before this one (blockDim.x = kThreads); `shared` holds one
// value per warp.
__device__ long long ExclusiveBlockScan(long long v, long long* shared) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  long long inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const long long up = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) shared[warp] = inclusive;
  __syncthreads();
  long long base = 0;
  for (int w = 0; w < warp; ++w) base += shared[w];
  __syncthreads();
  return base + inclusive - v;
}

// ---- kernels -------------------------------------------------------------------------------

__global__ void CheckInitKernel(const float* __restrict__ logits, int64_t ld, int64_t vocab,
                                double* __restrict__ z, unsigned long long* error) {
  __shared__ long long red[kCheckThreads / 32];
  const int64_t r = blockIdx.x;
  const float* x = logits + r * ld;
  double* zr = z + r * vocab;
  long long first = LLONG_MAX;
  bool any_finite = false;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float f = x[v];
    zr[v] = static_cast<double>(f);
    if (isnan(f) || f == __int_as_float(0x7f800000)) first = first < v ? first : v;
    any_finite = any_finite || isfinite(f);
  }
  first = BlockReduce(first, MinI64(), red);
  const bool any = __syncthreads_or(any_finite) != 0;
  if (threadIdx.x == 0) {
    const unsigned long long base = static_cast<unsigned long long>(r * (vocab + 1));
    if (first < vocab) {
      atomicMin(error, base + static_cast<unsigned long long>(first));
    } else if (!any) {
      atomicMin(error, base + static_cast<unsigned long long>(vocab));
    }
  }
}

__global__ void PenaltyKernel(const float* __restrict__ logits, int64_t ld, int64_t vocab,
                              int64_t rows, const SamplingParams* __restrict__ params,
                              const int64_t* __restrict__ offsets, const int32_t* __restrict__ seen,
                              int64_t first, int64_t n, double* __restrict__ z) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t g = first + i;
    int64_t lo = 0, hi = rows;  // the largest r with offsets[r] <= g
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (offsets[mid] <= g) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const float penalty_f = params[lo].repetition_penalty;
    if (penalty_f == 1.0f) continue;
    const double penalty = penalty_f;
    const int64_t id = seen[i];
    const double l = logits[lo * ld + id];
    z[lo * vocab + id] = l > 0.0 ? l / penalty : l * penalty;
  }
}

__global__ void __launch_bounds__(kThreads)
    RowKernel(int64_t vocab, int64_t batch_rows, const SamplingParams* __restrict__ params,
              double* __restrict__ z, uint64_t* __restrict__ keys, int32_t* __restrict__ ids,
              double* __restrict__ scratch, RowState* __restrict__ state,
              int* __restrict__ seg_begin, int* __restrict__ seg_end,
              const unsigned long long* error) {
  __shared__ double red_d[kWarps];
  __shared__ long long red_i[kWarps];
  const int64_t r = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  const int local = static_cast<int>((r % batch_rows) * vocab);
  if (tid == 0) {  // empty unless top-p below; the sort runs even after a data error
    seg_begin[r] = local;
    seg_end[r] = local;
  }
  if (error[0] != kNoError) return;
  const SamplingParams p = params[r];
  double* zr = z + r * vocab;
  if (p.temperature == 0.0f) {
    double best = kNegInfD;
    for (int64_t v = tid; v < vocab; v += kThreads) best = MaxOp()(best, zr[v]);
    best = BlockReduce(best, MaxOp(), red_d);
    long long idx = LLONG_MAX;
    for (int64_t v = tid; v < vocab; v += kThreads) {
      if (zr[v] == best && v < idx) idx = v;
    }
    idx = BlockReduce(idx, MinI64(), red_i);
    if (tid == 0) state[r].greedy_id = static_cast<int32_t>(idx);
    return;
  }
  const double temperature = p.temperature;
  for (int64_t v = tid; v < vocab; v += kThreads) zr[v] /= temperature;
  __syncthreads();

  if (p.top_k > 0 && p.top_k < vocab) {
    // The top_k-th largest key (the largest t with top_k keys >= t), 8 bits at a time from
    // the top: a histogram of the next digit among the keys that match the digits so far
    // (integer counts), then the digit where the count from the top reaches the rank left.
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long s_prefix;
    __shared__ long long s_rank;
    if (tid == 0) {
      s_prefix = 0;
      s_rank = p.top_k;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      const unsigned long long prefix = s_prefix;
      const unsigned long long high = shift == 56 ? 0ull : ~0ull << (shift + 8);
      for (int64_t v = tid; v < vocab; v += kThreads) {
        const unsigned long long key = OrderKey(zr[v]);
        if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        long long above = 0;
        int digit = 0;
        for (int d = 255; d >= 0; --d) {
          if (above + hist[d] >= s_rank) {
            digit = d;
            break;
          }
          above += hist[d];
        }
        s_prefix = prefix | (static_cast<unsigned long long>(digit) << shift);
        s_rank -= above;
      }
      __syncthreads();
    }
    const double threshold = KeyValue(s_prefix);
    for (int64_t v = tid; v < vocab; v += kThreads) {
      if (zr[v] < threshold) zr[v] = kNegInfD;
    }
  }

  double m = kNegInfD;
  for (int64_t v = tid; v < vocab; v += kThreads) m = MaxOp()(m, zr[v]);
  m = BlockReduce(m, MaxOp(), red_d);  // syncs: every thread's top-k writes are visible
  if (tid == 0) {
    state[r].greedy_id = -1;
    state[r].m = m;
  }
  if (p.top_p < 1.0f) {
    uint64_t* kr = keys + r * vocab;
    int32_t* ir = ids + r * vocab;
    double* er = scratch + r * vocab;
    for (int64_t v = tid; v < vocab; v += kThreads) {
      er[v] = zr[v] == kNegInfD ? 0.0 : exp(zr[v] - m);
    }
    // When few tokens are kept (after top-k: ~top_k), only they go to the sort, in ascending
    // id, so the stable sort orders them as the full row's would (the removed ones sort last
    // there and are never walked). Thread t takes a run of ids; a block scan of the runs'
    // counts gives each its place.
    // With most of the row kept, every id goes (coalesced writes; the removed sort last).
    long long kept = 0;
    for (int64_t v = tid; v < vocab; v += kThreads) kept += zr[v] != kNegInfD ? 1 : 0;
    kept = BlockReduce(kept, SumI64(), red_i);
    if (kept * 4 > vocab) {
      for (int64_t v = tid; v < vocab; v += kThreads) {
        kr[v] = OrderKey(zr[v]);
        ir[v] = static_cast<int32_t>(v);
      }
      kept = vocab;
    } else {
      const int64_t run = (vocab + kThreads - 1) / kThreads;
      const int64_t run_begin = tid * run < vocab ? tid * run : vocab;
      const int64_t run_end = run_begin + run < vocab ? run_begin + run : vocab;
      long long count = 0;
      for (int64_t v = run_begin; v < run_end; ++v) count += zr[v] != kNegInfD ? 1 : 0;
      long long before = ExclusiveBlockScan(count, red_i);
      for (int64_t v = run_begin; v < run_end; ++v) {
        if (zr[v] == kNegInfD) continue;
        kr[before] = OrderKey(zr[v]);
        ir[before] = static_cast<int32_t>(v);
        ++before;
      }
    }
    __syncthreads();
    // The CPU skips removed tokens; adding their +0 to a sum of non-negative terms that
    // starts at +0 leaves its bits unchanged.
    __shared__ double chunk_sums[kStage];
    const double sum = ChunkedSum(vocab, chunk_sums, [&](int64_t v) { return er[v]; });
    if (tid == 0) {
      state[r].sum = sum;
      seg_end[r] = local + static_cast<int>(kept);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    FinishKernel(const float* __restrict__ logits, int64_t ld, int64_t vocab,
                 const SamplingParams* __restrict__ params, double* __restrict__ z,
                 const int32_t* __restrict__ sorted_ids, double* __restrict__ scratch,
                 const RowState* __restrict__ state, int32_t* __restrict__ out_ids,
                 float* __restrict__ out_logprobs, float* __restrict__ out_raw,
                 unsigned long long* error) {
  __shared__ double red_d[kWarps];
  __shared__ long long red_i[kWarps];
  __shared__ long long s_keep;
  __shared__ long long s_chunk;
  __shared__ double s_before;
  __shared__ double stage[kStage];  // the top-p walk's values, then the chunk sums
  __shared__ double chunk_stage[kSampleChunk];
  if (error[0] != kNoError) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      const unsigned long long w = error[0];
      const int64_t r = static_cast<int64_t>(w / static_cast<unsigned long long>(vocab + 1));
      const int64_t v = static_cast<int64_t>(w % static_cast<unsigned long long>(vocab + 1));
      error[1] = v < vocab ? __float_as_uint(logits[r * ld + v]) : 0ull;
    }
    return;
  }
  const int64_t r = blockIdx.x;
  const SamplingParams p = params[r];
  const RowState st = state[r];
  const float* x = logits + r * ld;
  double* zr = z + r * vocab;
  const int tid = static_cast<int>(threadIdx.x);

  double xm = kNegInfD;
  if (out_raw != nullptr) {
    for (int64_t v = tid; v < vocab; v += kThreads) xm = MaxOp()(xm, static_cast<double>(x[v]));
    xm = BlockReduce(xm, MaxOp(), red_d);
    double* re = scratch + r * vocab;
    for (int64_t v = tid; v < vocab; v += kThreads) re[v] = exp(static_cast<double>(x[v]) - xm);
  }
  const bool greedy = st.greedy_id >= 0;
  const double m = st.m;
  if (!greedy) {
    // From here zr holds e = exp(z - m), the one value the CPU's top-p, min-p and softmax
    // compute from z (-inf stays the removed mark).
    for (int64_t v = tid; v < vocab; v += kThreads) {
      if (zr[v] != kNegInfD) zr[v] = exp(zr[v] - m);
    }
    __syncthreads();
    if (p.top_p < 1.0f) {
      long long kept = 0;
      for (int64_t v = tid; v < vocab; v += kThreads) kept += zr[v] != kNegInfD ? 1 : 0;
      kept = BlockReduce(kept, SumI64(), red_i);
      const int32_t* order = sorted_ids + r * vocab;
      const double top_p = p.top_p;
      const double sum = st.sum;
      double before = 0.0;
      long long keep = 0;
      // The CPU's loop: while (keep < kept && (keep == 0 || before < top_p)) add the next.
      StagedWalk(
          kept, stage, [&](int64_t i) { return zr[order[i]] / sum; },
          [&](int64_t, double q) {
            if (keep > 0 && !(before < top_p)) return true;
            before += q;
            ++keep;
            return false;
          });
      if (tid == 0) s_keep = keep;
      __syncthreads();
      for (long long i = s_keep + tid; i < kept; i += kThreads) zr[order[i]] = kNegInfD;
      __syncthreads();
    }
    if (p.min_p > 0.0f) {
      const double min_p = p.min_p;
      for (int64_t v = tid; v < vocab; v += kThreads) {
        if (zr[v] != kNegInfD && zr[v] < min_p) zr[v] = kNegInfD;
      }
    }
  }
  __syncthreads();
  // The draw: the chunked sum, the last kept id with e > 0, the first chunk whose end
  // exceeds the target (thread 0, over the chunk sums), then the walk inside it.
  int64_t chosen = st.greedy_id;
  double logprob = 0.0;
  if (!greedy) {
    long long last = 0;
    for (int64_t v = tid; v < vocab; v += kThreads) {
      if (zr[v] != kNegInfD && zr[v] > 0.0 && v > last) last = v;
    }
    last = BlockReduce(last, MaxI64(), red_i);
    const double sum =
        ChunkedSum(vocab, stage, [&](int64_t v) { return zr[v] == kNegInfD ? 0.0 : zr[v]; });
    const double target = Uniform(p.seed, p.step) * sum;
    if (tid == 0) {
      const int64_t chunks = (vocab + kSampleChunk - 1) / kSampleChunk;
      double before = 0.0;
      long long hit = -1;
      for (int64_t c = 0; c < chunks; ++c) {
        if (before + stage[c] > target) {
          hit = c;
          break;
        }
        before += stage[c];
      }
      s_chunk = hit;
      s_before = before;
    }
    __syncthreads();
    chosen = last;
    if (s_chunk >= 0) {
      const int64_t c0 = s_chunk * kSampleChunk;
      const int64_t len = vocab - c0 < kSampleChunk ? vocab - c0 : kSampleChunk;
      const double before = s_before;
      double within = 0.0;
      StagedWalk(
          len, chunk_stage, [&](int64_t i) { return zr[c0 + i]; },
          [&](int64_t i, double e) {
            if (e == kNegInfD) return false;
            within += e;
            if (before + within > target) {
              chosen = c0 + i;
              return true;
            }
            return false;
          });
    }
    logprob = log(zr[chosen]) - log(sum);
  }
  if (tid == 0) {
    out_ids[r] = static_cast<int32_t>(chosen);
    if (out_logprobs != nullptr) out_logprobs[r] = static_cast<float>(logprob);
  }
  if (out_raw != nullptr) {
    const double* re = scratch + r * vocab;
    const double raw_sum = ChunkedSum(vocab, stage, [&](int64_t v) { return re[v]; });
    if (tid == 0) {
      out_raw[r] = static_cast<float>((static_cast<double>(x[chosen]) - xm) - log(raw_sum));
    }
  }
}

}  // namespace

size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  return Carve(nullptr, rows, vocab, nullptr);
}

absl::Status LaunchSample(const SampleArgs& a, uint64_t* error, cudaStream_t stream) {
  if (a.rows <= 0) return absl::OkStatus();
  if (a.vocab > kMaxSampleVocab) {
    return absl::UnimplementedError(absl::StrCat("sample (cuda): vocab=", a.vocab,
                                                 " exceeds ", kMaxSampleVocab,
                                                 " (the chunk sums of a row in shared memory)"));
  }
  const int64_t rows = a.rows;
  const int64_t vocab = a.vocab;
  auto* err = reinterpret_cast<unsigned long long*>(error);
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, 2 * sizeof(uint64_t), stream));
  const uintptr_t base = reinterpret_cast<uintptr_t>(a.workspace);
  Layout l;
  Carve(reinterpret_cast<char*>((base + kAlign - 1) / kAlign * kAlign), rows, vocab, &l);
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(l.params, a.params, rows * sizeof(SamplingParams),
                                           cudaMemcpyHostToDevice, stream));
  CheckInitKernel<<<static_cast<unsigned>(rows), kCheckThreads, 0, stream>>>(a.logits, a.ld, vocab,
                                                                             l.z, err);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());

  const int64_t seen_total = a.seen_offsets != nullptr ? a.seen_offsets[rows] : 0;
  if (seen_total > 0) {
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(l.seen_offsets, a.seen_offsets,
                                             (rows + 1) * sizeof(int64_t), cudaMemcpyHostToDevice,
                                             stream));
    for (int64_t first = 0; first < seen_total; first += kSampleSeenChunk) {
      const int64_t n =
          seen_total - first < kSampleSeenChunk ? seen_total - first : kSampleSeenChunk;
      MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(l.seen, a.seen_ids + first, n * sizeof(int32_t),
                                               cudaMemcpyHostToDevice, stream));
      PenaltyKernel<<<kernel_util::BlocksFor(n, 256), 256, 0, stream>>>(
          a.logits, a.ld, vocab, rows, l.params, l.seen_offsets, l.seen, first, n, l.z);
      MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
  }

  // cub's item counts and offsets are int: sort batches of rows whose logits fit.
  const int64_t batch_rows = std::max<int64_t>(1, std::min<int64_t>(rows, INT_MAX / vocab));
  RowKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      vocab, batch_rows, l.params, l.z, l.keys[0], l.ids[0], reinterpret_cast<double*>(l.keys[1]),
      l.state, l.seg_begin, l.seg_end, err);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());

  bool any_top_p = false;
  for (int64_t r = 0; r < rows; ++r) {
    any_top_p = any_top_p || (a.params[r].temperature != 0.0f && a.params[r].top_p < 1.0f);
  }
  int selector = 0;
  if (any_top_p) {
    for (int64_t r0 = 0; r0 < rows; r0 += batch_rows) {
      const int64_t nb = std::min(batch_rows, rows - r0);
      size_t temp_bytes = 0;
      {
        cub::DoubleBuffer<uint64_t> keys(l.keys[0] + r0 * vocab, l.keys[1] + r0 * vocab);
        cub::DoubleBuffer<int32_t> values(l.ids[0] + r0 * vocab, l.ids[1] + r0 * vocab);
        MOE_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            nullptr, temp_bytes, keys, values, static_cast<int>(nb * vocab), static_cast<int>(nb),
            l.seg_begin + r0, l.seg_end + r0, 0, 64, stream));
      }
      // Fresh buffers for the sort itself: the query must not pick the starting buffer.
      cub::DoubleBuffer<uint64_t> keys(l.keys[0] + r0 * vocab, l.keys[1] + r0 * vocab);
      cub::DoubleBuffer<int32_t> values(l.ids[0] + r0 * vocab, l.ids[1] + r0 * vocab);
      if (temp_bytes > kCubTempBytes) {
        return absl::InternalError(absl::StrCat("sample (cuda): the radix sort needs ", temp_bytes,
                                                " temporary bytes, more than the ", kCubTempBytes,
                                                " reserved"));
      }
      MOE_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
          l.cub_temp, temp_bytes, keys, values, static_cast<int>(nb * vocab), static_cast<int>(nb),
          l.seg_begin + r0, l.seg_end + r0, 0, 64, stream));
      if (r0 > 0 && values.selector != selector) {
        return absl::InternalError("sample (cuda): radix sort batches ended in different buffers");
      }
      selector = values.selector;
    }
  }
  FinishKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      a.logits, a.ld, vocab, l.params, l.z, l.ids[selector], reinterpret_cast<double*>(l.keys[0]),
      l.state, a.ids, a.logprobs, a.raw_logprobs, err);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status SampleDataError(const SampleArgs& args, const uint64_t host_error[2]) {
  if (host_error[0] == kNoError) return absl::OkStatus();
  const uint64_t stride = static_cast<uint64_t>(args.vocab) + 1;
  const int64_t r = static_cast<int64_t>(host_error[0] / stride);
  const int64_t v = static_cast<int64_t>(host_error[0] % stride);
  if (v == args.vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample: logits row ", r, " is all -inf (vocab=", args.vocab, ")"));
  }
  float x;
  const uint32_t bits = static_cast<uint32_t>(host_error[1]);
  static_assert(sizeof(x) == sizeof(bits), "fp32 bits");
  memcpy(&x, &bits, sizeof(x));
  return absl::InvalidArgumentError(
      absl::StrCat("sample: logits[", r, ", ", v, "]=", x, " is NaN or +inf"));
}

absl::Status FinishSample(const SampleArgs& args, const uint64_t* error, cudaStream_t stream) {
  uint64_t host[2];
  MOE_RETURN_IF_ERROR(kernel_util::ReadErrorWords(error, stream, host));
  return SampleDataError(args, host);
}

}  // namespace moe::cuda
