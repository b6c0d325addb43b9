// Router: fp32 scores, optional group limit, top-k with ties to the lower id, weights.
// Each token is routed by a pure function of its own logits row (and the bias), so the result
// does not depend on the batch, the thread count or the run.
//
// Order of the fp32 softmax: max over the row (exact in any order), e_i = exp(x_i - max),
// sum = the 8 partial sums of e_i over i = l mod 8 added as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)),
// score_i = e_i / sum. Sigmoid: 1 / (1 + exp(-x)). exp is cpu_kernels::ExpF (~1 ulp).
//
// Ranking: by choice value, larger first, ties to the lower id; +0 and -0 are equal; a NaN
// choice ranks below every number (-inf included), so a row of NaN logits still yields valid,
// distinct ids (the lowest) and NaN weights that show the problem downstream. Softmax of a row
// holding NaN or +inf is NaN throughout (as in PyTorch). A group whose top-2 sum is NaN ranks
// last; group ties go to the lower group id.
#include <cstdint>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::ExpF;
using cpu_kernels::Scratch;
using cpu_kernels::SigmoidF;

// An int32 that ranks like the choice value: larger key = better, -0 == +0, NaN lowest.
inline int32_t RankKey(float v) {
  const bool nan = !(v == v);
  const int32_t key = cpu_kernels::OrderedKey(v + 0.0f);  // -0 + 0 = +0
  return nan ? std::numeric_limits<int32_t>::min() : key;
}

// Per-thread scratch, sized once per call.
struct RouterScratch {
  explicit RouterScratch(const RouterArgs& a)
      : scores(a.num_experts),
        choice(a.num_experts),
        key(a.num_experts),
        group_key(a.num_groups),
        group_keep(a.num_groups),
        top_key(a.top_k),
        top_id(a.top_k) {}
  Scratch<float, 512> scores;
  Scratch<float, 512> choice;
  Scratch<int32_t, 512> key;
  Scratch<int32_t, 64> group_key;
  Scratch<uint8_t, 64> group_keep;
  Scratch<int32_t, 64> top_key;
  Scratch<int32_t, 64> top_id;
};

void ComputeScores(const RouterArgs& a, const float* x, float* scores) {
  const int64_t num_experts = a.num_experts;
  if (a.score == ScoreFunction::kSigmoid) {
#pragma omp simd
    for (int64_t i = 0; i < num_experts; ++i) scores[i] = SigmoidF(x[i]);
    return;
  }
  // Whatever the reduction order picks when the row holds NaN, the sum below is NaN then.
  float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
  for (int64_t i = 0; i < num_experts; ++i) max = max < x[i] ? x[i] : max;
#pragma omp simd
  for (int64_t i = 0; i < num_experts; ++i) scores[i] = ExpF(x[i] - max);
  float part[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 8 <= num_experts; i += 8) {
    for (int l = 0; l < 8; ++l) part[l] += scores[i + l];
  }
  for (int l = 0; i < num_experts; ++i, ++l) part[l] += scores[i];
  const float sum =
      ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
#pragma omp simd
  for (int64_t j = 0; j < num_experts; ++j) scores[j] = scores[j] / sum;
}

// Marks the topk_groups best groups by the sum of their two best choice values.
void SelectGroups(const RouterArgs& a, const float* choice, const int32_t* key, RouterScratch& s) {
  const int64_t group_size = a.num_experts / a.num_groups;
  for (int64_t g = 0; g < a.num_groups; ++g) {
    const int32_t* k = key + g * group_size;
    // group_size >= 2 is validated. Strict > while scanning up keeps the lower id on ties.
    int64_t i1 = k[1] > k[0] ? 1 : 0;
    int64_t i2 = 1 - i1;
    for (int64_t i = 2; i < group_size; ++i) {
      if (k[i] > k[i1]) {
        i2 = i1;
        i1 = i;
      } else if (k[i] > k[i2]) {
        i2 = i;
      }
    }
    const float* c = choice + g * group_size;
    s.group_key[g] = RankKey(c[i1] + c[i2]);
    s.group_keep[g] = 0;
  }
  for (int64_t n = 0; n < a.topk_groups; ++n) {
    int64_t best = -1;
    for (int64_t g = 0; g < a.num_groups; ++g) {
      if (!s.group_keep[g] && (best < 0 || s.group_key[g] > s.group_key[best])) best = g;
    }
    s.group_keep[best] = 1;
  }
}

// Top-k of the keys over the kept groups into s.top_id, then sorted by ascending id.
void SelectExperts(const RouterArgs& a, const int32_t* key, RouterScratch& s) {
  const int64_t k_max = a.top_k;
  const int64_t group_size = a.num_experts / a.num_groups;
  int32_t* top_key = s.top_key.data();
  int32_t* top_id = s.top_id.data();
  int64_t filled = 0;
  for (int64_t g = 0; g < a.num_groups; ++g) {
    if (a.num_groups > 1 && !s.group_keep[g]) continue;
    for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
      const int32_t v = key[i];
      // Ids come in ascending order, so an equal key never displaces an earlier entry.
      if (filled == k_max && v <= top_key[k_max - 1]) continue;
      int64_t pos = filled < k_max ? filled++ : k_max - 1;
      while (pos > 0 && v > top_key[pos - 1]) {
        top_key[pos] = top_key[pos - 1];
        top_id[pos] = top_id[pos - 1];
        --pos;
      }
      top_key[pos] = v;
      top_id[pos] = static_cast<int32_t>(i);
    }
  }
  // filled == k_max: validation guarantees the kept groups hold at least top_k experts.
  for (int64_t k = 1; k < k_max; ++k) {
    const int32_t id = top_id[k];
    int64_t pos = k;
    while (pos > 0 && top_id[pos - 1] > id) {
      top_id[pos] = top_id[pos - 1];
      --pos;
    }
    top_id[pos] = id;
  }
}

void RouteToken(const RouterArgs& a, int64_t t, RouterScratch& s) {
  const int64_t num_experts = a.num_experts;
  const int64_t k_max = a.top_k;
  float* scores = s.scores.data();
  ComputeScores(a, a.logits + t * num_experts, scores);

  int32_t* ids = a.ids + t * k_max;
  if (a.force_balanced) {
    for (int64_t k = 0; k < k_max; ++k) {
      ids[k] = static_cast<int32_t>((t * k_max + k) % num_experts);
    }
  } else {
    const float* choice = scores;
    if (a.expert_bias != nullptr) {
      float* biased = s.choice.data();
#pragma omp simd
      for (int64_t i = 0; i < num_experts; ++i) biased[i] = scores[i] + a.expert_bias[i];
      choice = biased;
    }
    int32_t* key = s.key.data();
#pragma omp simd
    for (int64_t i = 0; i < num_experts; ++i) key[i] = RankKey(choice[i]);
    if (a.num_groups > 1) SelectGroups(a, choice, key, s);
    SelectExperts(a, key, s);
    for (int64_t k = 0; k < k_max; ++k) ids[k] = s.top_id[k];
  }

  float* weights = a.weights + t * k_max;
  for (int64_t k = 0; k < k_max; ++k) weights[k] = scores[ids[k]];
  if (a.renormalize) {
    float sum = 0.0f;
    for (int64_t k = 0; k < k_max; ++k) sum += weights[k];
    const float denom = sum + 1e-20f;
    for (int64_t k = 0; k < k_max; ++k) weights[k] = weights[k] / denom;
  }
  for (int64_t k = 0; k < k_max; ++k) weights[k] = weights[k] * a.route_scale;
}

}  // namespace

absl::Status CpuBackend::RunRouter(const RouterArgs& args) {
  const int threads =
      cpu_kernels::ThreadsFor(num_threads(), args.tokens * (args.num_experts * 8 + args.top_k));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    RouterScratch scratch(args);
#pragma omp for schedule(dynamic, 16)
    for (int64_t t = 0; t < args.tokens; ++t) RouteToken(args, t, scratch);
  }
  return absl::OkStatus();
}

}  // namespace moe
