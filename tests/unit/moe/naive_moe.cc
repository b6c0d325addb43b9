#include "tests/unit/moe/naive_moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/dtype.h"

namespace moe::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double Silu(double g) { return g / (1.0 + std::exp(-g)); }
double Sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The value the run dtype holds for v: bf16 rounds (through float, as the engine's fp32 values
// are rounded); f32 keeps the float64 value, the reference's own precision.
double Held(double v, DType dtype) {
  return dtype == DType::kBF16 ? RoundToBf16(static_cast<float>(v)) : v;
}

// Distance from v to the nearest point where its rounding to bf16 changes; +inf for f32.
double RoundingBoundaryDistance(double v, DType dtype) {
  if (dtype != DType::kBF16) return kInf;
  const bf16 r = FloatToBf16(static_cast<float>(v));
  double best = kInf;
  for (int step : {-1, 1}) {
    const double next = Bf16ToFloat(bf16{static_cast<uint16_t>(r.bits + step)});
    if (std::isfinite(next)) best = std::min(best, std::fabs(v - 0.5 * (Bf16ToFloat(r) + next)));
  }
  return best;
}

// Indices of `v` ordered by value descending, ties to the lower index.
std::vector<int64_t> RankDescending(const std::vector<double>& v) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return order;
}

}  // namespace

std::vector<double> NaiveFfn(const std::vector<double>& w1, const std::vector<double>& w3,
                             const std::vector<double>& w2, int64_t inter,
                             const std::vector<double>& v) {
  const int64_t d = static_cast<int64_t>(v.size());
  std::vector<double> h(inter);
  for (int64_t j = 0; j < inter; ++j) {
    double g = 0.0, u = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      g += w1[j * d + c] * v[c];
      u += w3[j * d + c] * v[c];
    }
    h[j] = Silu(g) * u;
  }
  std::vector<double> y(d, 0.0);
  for (int64_t r = 0; r < d; ++r) {
    for (int64_t j = 0; j < inter; ++j) y[r] += w2[r * inter + j] * h[j];
  }
  return y;
}

NaiveRouting NaiveRoute(const MoeConfig& c, const NaiveMoeWeights& w, const std::vector<double>& x,
                        int64_t tokens) {
  const int64_t e = c.num_experts, k = c.top_k, d = c.hidden;
  // The block holds the gate and the bias as run-dtype values.
  std::vector<double> gate(w.gate.size()), bias(w.bias.size());
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = Held(w.gate[i], c.dtype);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = Held(w.bias[i], c.dtype);
  const bool logits_rd = c.router_gemm == RouterGemm::kRunDType;
  const bool weights_rd = c.route_weights == RouteWeights::kRunDType;
  NaiveRouting r;
  r.ids.resize(tokens * k);
  r.weights.resize(tokens * k);
  r.margin.assign(tokens, kInf);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> scores(e);
    for (int64_t j = 0; j < e; ++j) {
      double logit = 0.0;
      for (int64_t i = 0; i < d; ++i) logit += x[t * d + i] * gate[j * d + i];
      if (logits_rd) {
        // A logit this close to a rounding boundary may round the other way from fp32.
        r.margin[t] = std::min(r.margin[t], RoundingBoundaryDistance(logit, c.dtype));
        logit = Held(logit, c.dtype);
      }
      scores[j] = logit;
    }
    if (c.score == ScoreFunction::kSigmoid) {
      for (double& s : scores) s = Sigmoid(s);
    } else {
      const double mx = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      for (double& s : scores) sum += (s = std::exp(s - mx));
      for (double& s : scores) s /= sum;
    }
    std::vector<int32_t> ids(k);
    if (c.force_balanced) {
      for (int64_t s = 0; s < k; ++s) ids[s] = static_cast<int32_t>((t * k + s) % e);
    } else {
      std::vector<double> choice = scores;
      if (c.use_expert_bias) {
        for (int64_t j = 0; j < e; ++j) choice[j] += bias[j];
      }
      std::vector<bool> allowed(e, true);
      if (c.num_groups > 1) {
        const int64_t per = e / c.num_groups;
        std::vector<double> group_score(c.num_groups);
        for (int64_t g = 0; g < c.num_groups; ++g) {
          std::vector<double> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
          std::sort(members.begin(), members.end(), std::greater<double>());
          group_score[g] = members[0] + members[1];
        }
        const std::vector<int64_t> order = RankDescending(group_score);
        for (int64_t g = c.topk_groups; g < c.num_groups; ++g) {
          for (int64_t j = 0; j < per; ++j) allowed[order[g] * per + j] = false;
        }
        if (c.topk_groups < c.num_groups) {
          r.margin[t] = std::min(r.margin[t], group_score[order[c.topk_groups - 1]] -
                                                  group_score[order[c.topk_groups]]);
        }
      }
      std::vector<double> masked = choice;
      for (int64_t j = 0; j < e; ++j) {
        if (!allowed[j]) masked[j] = -kInf;
      }
      const std::vector<int64_t> order = RankDescending(masked);
      for (int64_t s = 0; s < k; ++s) ids[s] = static_cast<int32_t>(order[s]);
      if (k < e && allowed[order[k]]) {
        r.margin[t] = std::min(r.margin[t], masked[order[k - 1]] - masked[order[k]]);
      }
      std::sort(ids.begin(), ids.end());
    }
    double sum = 0.0;
    for (int64_t s = 0; s < k; ++s) sum += scores[ids[s]];
    for (int64_t s = 0; s < k; ++s) {
      double wt = scores[ids[s]];
      if (c.renormalize) wt /= (sum + 1e-20);
      r.ids[t * k + s] = ids[s];
      wt *= c.route_scale;
      if (weights_rd) {
        r.margin[t] = std::min(r.margin[t], RoundingBoundaryDistance(wt, c.dtype));
        wt = Held(wt, c.dtype);
      }
      r.weights[t * k + s] = wt;
    }
  }
  return r;
}

std::vector<double> NaiveMoe(const MoeConfig& c, const NaiveMoeWeights& w,
                             const std::vector<double>& x, int64_t tokens) {
  const int64_t e = c.num_experts, k = c.top_k, d = c.hidden;
  const NaiveRouting r = NaiveRoute(c, w, x, tokens);
  // Capacity mode: an expert keeps its first `capacity` slots in dispatch order, which within
  // one expert is ascending slot index t * K + k.
  std::vector<bool> kept(tokens * k, true);
  if (c.capacity_factor > 0.0f) {
    const auto capacity =
        static_cast<int64_t>(std::ceil(static_cast<double>(tokens) * k / e * c.capacity_factor));
    std::vector<int64_t> taken(e, 0);
    for (int64_t s = 0; s < tokens * k; ++s) kept[s] = taken[r.ids[s]]++ < capacity;
  }
  std::vector<double> out(tokens * d, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<double> row(x.begin() + t * d, x.begin() + (t + 1) * d);
    for (int64_t s = 0; s < k; ++s) {
      if (!kept[t * k + s]) continue;
      const int32_t id = r.ids[t * k + s];
      const double wt = r.weights[t * k + s];
      std::vector<double> in = row;
      if (c.score_before_experts) {
        for (double& v : in) v *= wt;
      }
      const std::vector<double> y = NaiveFfn(w.w1[id], w.w3[id], w.w2[id], c.inter, in);
      const double scale = c.score_before_experts ? 1.0 : wt;
      // RouteWeights::kRunDType rounds each weighted expert output (score after experts).
      const bool round_terms =
          !c.score_before_experts && c.route_weights == RouteWeights::kRunDType;
      for (int64_t i = 0; i < d; ++i) {
        out[t * d + i] += round_terms ? Held(scale * y[i], c.dtype) : scale * y[i];
      }
    }
    if (c.num_shared_experts > 0) {
      const int64_t sh = c.num_shared_experts * c.shared_inter;
      std::vector<double> y = NaiveFfn(w.shared_w1, w.shared_w3, w.shared_w2, sh, row);
      if (c.shared_gate) {
        double logit = 0.0;
        for (int64_t i = 0; i < d; ++i) logit += row[i] * Held(w.shared_gate[i], c.dtype);
        // RouterGemm::kRunDType: the logit and the sigmoid are rounded to the run dtype.
        const bool rd = c.router_gemm == RouterGemm::kRunDType;
        const double gate_value =
            rd ? Held(Sigmoid(Held(logit, c.dtype)), c.dtype) : Sigmoid(logit);
        for (double& v : y) v *= gate_value;
      }
      for (int64_t i = 0; i < d; ++i) out[t * d + i] += y[i];
    }
  }
  return out;
}

}  // namespace moe::testing
