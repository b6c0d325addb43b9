// The deterministic combine: a gather per token, never a float atomic scatter.
//
// For token t, its top_k slots s are visited in ascending (ids[s], s) (ids may repeat within a
// token under force-balanced routing) and
//   acc = fma(fp32(expert_out[slot_to_row[s]]), weight[s], acc)      acc starts at +0
// i.e. each product is added to the fp32 accumulator with a single rounding (the fused
// multiply-add; weight 1 when weights is null, which makes it a plain fp32 add). The fma is
// explicit so that the bits do not depend on the compiler's contraction setting.
// routed = round(acc) once; with add_to_out, out[t] = round(routed + out[t]): two roundings,
// the upstream torchtitan order (routed sum first, then the shared experts' output).
// (Upstream also rounds each weighted row y * w to bf16 before its fp32 sum; backend.h's
// contract has no such rounding, so bf16 bits can differ from torchtitan's there.)
//
// Dropped slots (capacity mode): slot_to_row[s] < 0 means the slot's row was dropped; it
// contributes nothing (a token whose slots are all dropped gets routed = +0).
// slot_to_row[s] >= tokens * top_k is InvalidArgument, checked before anything is written.
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

using cpu_kernels::LoadBf16;
using cpu_kernels::Scratch;
using cpu_kernels::StoreBf16;

// Columns accumulated at a time: the fp32 accumulator stays in L1 across the top_k rows.
constexpr int64_t kColBlock = 2048;

struct Term {
  const void* row;  // start of the expert output row
  float weight;
};

// Fills terms with token t's contributing slots in (expert id, slot) order; returns how many.
int64_t OrderTerms(const CombineArgs& a, int64_t t, Term* terms, int32_t* order) {
  const int64_t k_max = a.top_k;
  const int64_t first = t * k_max;
  // Insertion sort by id over slots taken in ascending order: stable, so ties keep slot order.
  for (int64_t k = 0; k < k_max; ++k) {
    const int32_t id = a.ids[first + k];
    int64_t pos = k;
    while (pos > 0 && a.ids[first + order[pos - 1]] > id) {
      order[pos] = order[pos - 1];
      --pos;
    }
    order[pos] = static_cast<int32_t>(k);
  }
  const int64_t elem = DTypeSize(a.dtype);
  int64_t n = 0;
  for (int64_t k = 0; k < k_max; ++k) {
    const int64_t slot = first + order[k];
    const int32_t row = a.slot_to_row[slot];
    if (row < 0) continue;
    terms[n].row = static_cast<const uint8_t*>(a.expert_out) + row * a.expert_out_ld * elem;
    terms[n].weight = a.weights != nullptr ? a.weights[slot] : 1.0f;
    ++n;
  }
  return n;
}

MOE_CPU_INLINE float Load(float v) { return v; }
MOE_CPU_INLINE float Load(uint16_t v) { return LoadBf16(v); }

// acc = fma(y_k, w_k, acc) for terms k = 0..3 in order: the same roundings as four passes of
// one term, with a quarter of the accumulator traffic.
template <typename T>
void Accumulate4(const Term* terms, int64_t c0, int64_t n, float* acc) {
  const T* y0 = static_cast<const T*>(terms[0].row) + c0;
  const T* y1 = static_cast<const T*>(terms[1].row) + c0;
  const T* y2 = static_cast<const T*>(terms[2].row) + c0;
  const T* y3 = static_cast<const T*>(terms[3].row) + c0;
  const float w0 = terms[0].weight, w1 = terms[1].weight;
  const float w2 = terms[2].weight, w3 = terms[3].weight;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float a = std::fma(Load(y0[j]), w0, acc[j]);
    a = std::fma(Load(y1[j]), w1, a);
    a = std::fma(Load(y2[j]), w2, a);
    acc[j] = std::fma(Load(y3[j]), w3, a);
  }
}

template <typename T>
void Accumulate1(const Term& term, int64_t c0, int64_t n, float* acc) {
  const T* y = static_cast<const T*>(term.row) + c0;
  const float w = term.weight;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] = std::fma(Load(y[j]), w, acc[j]);
}

void StoreRow(const float* acc, int64_t n, bool add, float* out) {
  if (add) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = acc[j] + out[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = acc[j];
  }
}

void StoreRow(const float* acc, int64_t n, bool add, uint16_t* out) {
  if (add) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      out[j] = StoreBf16(LoadBf16(StoreBf16(acc[j])) + LoadBf16(out[j]));
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = StoreBf16(acc[j]);
  }
}

// T: float for f32, uint16_t (raw bits) for bf16.
template <typename T>
void CombineToken(const CombineArgs& a, int64_t t, Term* terms, int32_t* order) {
  const int64_t n_terms = OrderTerms(a, t, terms, order);
  T* out = static_cast<T*>(a.out) + t * a.out_ld;
  alignas(64) float acc[kColBlock];
  for (int64_t c0 = 0; c0 < a.cols; c0 += kColBlock) {
    const int64_t n = a.cols - c0 < kColBlock ? a.cols - c0 : kColBlock;
    for (int64_t j = 0; j < n; ++j) acc[j] = 0.0f;
    int64_t k = 0;
    for (; k + 4 <= n_terms; k += 4) Accumulate4<T>(terms + k, c0, n, acc);
    for (; k < n_terms; ++k) Accumulate1<T>(terms[k], c0, n, acc);
    StoreRow(acc, n, a.add_to_out, out + c0);
  }
}

}  // namespace

absl::Status CpuBackend::RunCombine(const CombineArgs& args) {
  const int64_t slots = args.tokens * args.top_k;
  for (int64_t s = 0; s < slots; ++s) {
    if (args.slot_to_row[s] >= slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("combine: slot_to_row[", s, "]=", args.slot_to_row[s],
                       " is outside the expert_out rows [0, tokens * top_k=", slots, ")"));
    }
  }
  const int threads = cpu_kernels::ThreadsFor(num_threads(), slots * args.cols);
  const int64_t chunk = cpu_kernels::ChunkFor(args.top_k * args.cols);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    Scratch<Term, 64> terms(args.top_k);
    Scratch<int32_t, 64> order(args.top_k);
#pragma omp for schedule(dynamic, chunk)
    for (int64_t t = 0; t < args.tokens; ++t) {
      if (args.dtype == DType::kBF16) {
        CombineToken<uint16_t>(args, t, terms.data(), order.data());
      } else {
        CombineToken<float>(args, t, terms.data(), order.data());
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
