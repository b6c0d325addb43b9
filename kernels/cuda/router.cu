// One warp routes one token (kWarps tokens per block, grid-stride over tokens). The scores sit
// in the warp's slice of shared memory when num_experts + num_groups fit (kCached); past that
// every score is recomputed from the logits row when needed, which gives the same bits.
//
// Ranking without sorting: rank(i) = RankKey(choice_i) as an unsigned order in the high word,
// ~i in the low word; a 64-bit value unique per expert whose order is the CPU's "larger choice
// first, lower id on ties". The top-k is k rounds of a warp max over the ranks below the
// previous pick (no marks to keep); the k-th pick is the cut, and the experts at or above it
// are written in ascending id by a ballot compaction. Groups are ranked the same way.
//
// The softmax sum is the CPU's: lane l < 8 adds the e_i with i = l mod 8 in ascending i, the 8
// partials are combined as ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)). Every fp32 operation is a _rn
// intrinsic, so nvcc cannot contract a multiply and an add into an fma.
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/cuda/router.h"

namespace moe::cuda {
namespace {

using kernel_util::ExpF;
using kernel_util::SigmoidF;

constexpr int kWarps = 4;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxSharedBytes = 48 * 1024;
constexpr int32_t kNanKey = -2147483647 - 1;
constexpr uint64_t kAboveAll = ~0ull;

// As the CPU's RankKey: an int32 ordered like the value, -0 == +0, NaN below -inf.
__device__ __forceinline__ int32_t RankKey(float v) {
  if (!(v == v)) return kNanKey;
  const int32_t i = v == 0.0f ? 0 : __float_as_int(v);
  return i ^ ((i >> 31) & 0x7fffffff);
}

// Larger = ranked first: by key, then by lower id.
__device__ __forceinline__ uint64_t Rank(int32_t key, int64_t id) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(key) ^ 0x80000000u) << 32) |
         static_cast<uint64_t>(~static_cast<uint32_t>(id));
}

__device__ __forceinline__ uint64_t WarpMax(uint64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const uint64_t u = __shfl_xor_sync(kFullMask, v, offset);
    v = u > v ? u : v;
  }
  return v;
}

// One token's row as seen by one warp. Every lane holds the same max, sum and cuts.
template <bool kCached>
struct Token {
  const RouterArgs& a;
  const float* x;             // logits row
  const float* scores;        // kCached: [num_experts]
  const int32_t* group_keys;  // kCached and num_groups > 1: [num_groups]
  float max = 0.0f;
  float sum = 0.0f;
  int64_t group_size = 0;
  uint64_t group_cut = 0;  // groups ranked at or above it are kept
  int64_t memo_group = -1;
  bool memo_kept = true;

  __device__ float Score(int64_t i) const {
    if (kCached) return scores[i];
    if (a.score == ScoreFunction::kSigmoid) return SigmoidF(x[i]);
    return __fdiv_rn(ExpF(__fsub_rn(x[i], max)), sum);
  }
  __device__ float Choice(int64_t i) const {
    const float s = Score(i);
    return a.expert_bias != nullptr ? __fadd_rn(s, a.expert_bias[i]) : s;
  }
  __device__ uint64_t ExpertRank(int64_t i) const { return Rank(RankKey(Choice(i)), i); }

  // RankKey of the sum of the group's two best choice values (best first, as the CPU adds).
  __device__ int32_t ComputeGroupKey(int64_t g) const {
    uint64_t r1 = 0, r2 = 0;  // every rank is > 0
    float c1 = 0.0f, c2 = 0.0f;
    for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
      const float c = Choice(i);
      const uint64_t r = Rank(RankKey(c), i);
      if (r > r1) {
        r2 = r1;
        c2 = c1;
        r1 = r;
        c1 = c;
      } else if (r > r2) {
        r2 = r;
        c2 = c;
      }
    }
    return RankKey(__fadd_rn(c1, c2));
  }
  __device__ uint64_t GroupRank(int64_t g) const {
    return Rank(kCached ? group_keys[g] : ComputeGroupKey(g), g);
  }
  // Lanes walk experts in ascending id, so the last group's answer is usually the next one's.
  __device__ bool Kept(int64_t i) {
    if (a.num_groups == 1) return true;
    const int64_t g = i / group_size;
    if (g != memo_group) {
      memo_group = g;
      memo_kept = GroupRank(g) >= group_cut;
    }
    return memo_kept;
  }
};

template <bool kCached>
__global__ void RouterKernel(RouterArgs a) {
  extern __shared__ float shared[];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t num_experts = a.num_experts;
  const int64_t num_groups = a.num_groups;
  const int64_t k_max = a.top_k;
  float* scores = kCached ? shared + warp * (num_experts + num_groups) : nullptr;
  int32_t* group_keys = kCached ? reinterpret_cast<int32_t*>(scores + num_experts) : nullptr;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp; t < a.tokens; t += stride) {
    __syncwarp();  // the previous token's reads of shared memory are done
    Token<kCached> tok{a, a.logits + t * num_experts, scores, group_keys};
    tok.group_size = num_experts / num_groups;
    const float* x = tok.x;

    if (a.score == ScoreFunction::kSoftmax) {
      // Exact in any order; a NaN anywhere makes the sum, hence every score, NaN regardless.
      float m = -__int_as_float(0x7f800000);
      for (int64_t i = lane; i < num_experts; i += 32) m = m < x[i] ? x[i] : m;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        const float u = __shfl_xor_sync(kFullMask, m, offset);
        m = m < u ? u : m;
      }
      tok.max = __shfl_sync(kFullMask, m, 0);
      if (kCached) {
        for (int64_t i = lane; i < num_experts; i += 32) {
          scores[i] = ExpF(__fsub_rn(x[i], tok.max));
        }
        __syncwarp();
      }
      float part = 0.0f;
      if (lane < 8) {
        for (int64_t i = lane; i < num_experts; i += 8) {
          part = __fadd_rn(part, kCached ? scores[i] : ExpF(__fsub_rn(x[i], tok.max)));
        }
      }
      float p[8];
#pragma unroll
      for (int l = 0; l < 8; ++l) p[l] = __shfl_sync(kFullMask, part, l);
      tok.sum = __fadd_rn(__fadd_rn(__fadd_rn(p[0], p[1]), __fadd_rn(p[2], p[3])),
                          __fadd_rn(__fadd_rn(p[4], p[5]), __fadd_rn(p[6], p[7])));
      if (kCached) {
        __syncwarp();
        for (int64_t i = lane; i < num_experts; i += 32) scores[i] = __fdiv_rn(scores[i], tok.sum);
      }
    } else if (kCached) {
      for (int64_t i = lane; i < num_experts; i += 32) scores[i] = SigmoidF(x[i]);
    }
    __syncwarp();

    int32_t* ids = a.ids + t * k_max;
    if (a.force_balanced) {
      for (int64_t k = lane; k < k_max; k += 32) {
        ids[k] = static_cast<int32_t>((t * k_max + k) % num_experts);
      }
    } else {
      if (num_groups > 1) {
        if (kCached) {
          for (int64_t g = lane; g < num_groups; g += 32) group_keys[g] = tok.ComputeGroupKey(g);
          __syncwarp();
        }
        uint64_t prev = kAboveAll;
        for (int64_t n = 0; n < a.topk_groups; ++n) {
          uint64_t best = 0;
          for (int64_t g = lane; g < num_groups; g += 32) {
            const uint64_t r = tok.GroupRank(g);
            if (r < prev && r > best) best = r;
          }
          prev = WarpMax(best);
        }
        tok.group_cut = prev;
      }
      uint64_t cut = kAboveAll;
      for (int64_t k = 0; k < k_max; ++k) {
        uint64_t best = 0;
        for (int64_t i = lane; i < num_experts; i += 32) {
          if (!tok.Kept(i)) continue;
          const uint64_t r = tok.ExpertRank(i);
          if (r < cut && r > best) best = r;
        }
        cut = WarpMax(best);
      }
      // Validation guarantees the kept groups hold top_k experts, so exactly top_k pass.
      int64_t filled = 0;
      for (int64_t base = 0; base < num_experts && filled < k_max; base += 32) {
        const int64_t i = base + lane;
        const bool chosen = i < num_experts && tok.Kept(i) && tok.ExpertRank(i) >= cut;
        const unsigned mask = __ballot_sync(kFullMask, chosen);
        if (chosen) ids[filled + __popc(mask & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
        filled += __popc(mask);
      }
    }
    __syncwarp();  // ids written by every lane are visible to all

    float denom = 0.0f;
    if (a.renormalize) {
      float s = 0.0f;
      for (int64_t k = 0; k < k_max; ++k) s = __fadd_rn(s, tok.Score(ids[k]));
      denom = __fadd_rn(s, 1e-20f);
    }
    float* weights = a.weights + t * k_max;
    for (int64_t k = lane; k < k_max; k += 32) {
      float w = tok.Score(ids[k]);
      if (a.renormalize) w = __fdiv_rn(w, denom);
      weights[k] = __fmul_rn(w, a.route_scale);
    }
  }
}

}  // namespace

absl::Status LaunchRouter(const RouterArgs& args, cudaStream_t stream) {
  if (args.tokens == 0) return absl::OkStatus();
  const unsigned blocks = kernel_util::BlocksFor(args.tokens, kWarps);
  const int64_t shared_bytes =
      kWarps * (args.num_experts + args.num_groups) * static_cast<int64_t>(sizeof(float));
  if (shared_bytes <= kMaxSharedBytes) {
    RouterKernel<true><<<blocks, kWarps * 32, static_cast<size_t>(shared_bytes), stream>>>(args);
  } else {
    RouterKernel<false><<<blocks, kWarps * 32, 0, stream>>>(args);
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
