// Sample: the logits processors and the draw, one row per iteration in fp64. Every logit is
// checked before any output is written, so a bad row leaves the outputs untouched. Each thread
// carves its scratch out of the caller's workspace; nothing is allocated.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// Tokens top-p orders before it walks (more only if the walk needs them).
constexpr int64_t kTopPPrefix = 2048;

struct RowResult {
  int32_t id;
  double logprob;
};

// Scratch of one thread, reused across its rows, each array [vocab]: z holds the processed
// logits (-inf for a removed token), values a copy for top-k's selection, order the kept ids
// for top-p.
struct RowScratch {
  double* z;
  double* values;
  int32_t* order;
};

constexpr size_t kScratchAlign = 64;

size_t AlignUp(size_t n) { return (n + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

// Bytes of one thread's RowScratch.
size_t ThreadScratchBytes(int64_t vocab) {
  const size_t v = static_cast<size_t>(vocab);
  return 2 * AlignUp(v * sizeof(double)) + AlignUp(v * sizeof(int32_t));
}

// Threads (and so scratch slots) that Sample uses: never more than there are rows.
int SampleThreads(int backend_threads, int64_t rows, int64_t vocab) {
  const int threads = cpu_kernels::ThreadsFor(backend_threads, rows * vocab);
  return static_cast<int>(std::min<int64_t>(threads, rows));
}

RowScratch CarveScratch(char* base, int64_t vocab) {
  const size_t v = static_cast<size_t>(vocab);
  RowScratch s;
  s.z = reinterpret_cast<double*>(base);
  base += AlignUp(v * sizeof(double));
  s.values = reinterpret_cast<double*>(base);
  base += AlignUp(v * sizeof(double));
  s.order = reinterpret_cast<int32_t*>(base);
  return s;
}

// backend.h's chunked sum of term(v) for v in [0, n): each chunk of kSampleChunk ids in
// ascending id from 0.0, then the chunk sums in ascending order from 0.0. chunk_sums (if not
// null) gets each chunk's sum. A removed token's term is +0.0, which leaves these sums of
// non-negative terms (from +0.0) as they are.
template <typename Term>
double ChunkedSum(int64_t n, Term term, double* chunk_sums) {
  double total = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += kSampleChunk) {
    double chunk = 0.0;
    const int64_t end = std::min(n, c0 + kSampleChunk);
    for (int64_t v = c0; v < end; ++v) chunk += term(v);
    if (chunk_sums != nullptr) chunk_sums[c0 / kSampleChunk] = chunk;
    total += chunk;
  }
  return total;
}

RowResult SampleRow(const float* x, int64_t vocab, const SamplingParams& p,
                    const int32_t* seen_begin, const int32_t* seen_end, RowScratch* s) {
  double* const z = s->z;
  for (int64_t v = 0; v < vocab; ++v) z[v] = x[v];
  // From the original logit, so an id seen twice is penalised once.
  if (p.repetition_penalty != 1.0f) {
    const double penalty = p.repetition_penalty;
    for (const int32_t* id = seen_begin; id != seen_end; ++id) {
      const double l = x[*id];
      z[*id] = l > 0.0 ? l / penalty : l * penalty;
    }
  }
  if (p.temperature == 0.0f) {
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (z[v] > z[best]) best = v;
    }
    return {static_cast<int32_t>(best), 0.0};
  }
  const double temperature = p.temperature;
  for (int64_t v = 0; v < vocab; ++v) z[v] /= temperature;

  if (p.top_k > 0 && p.top_k < vocab) {
    double* const values = s->values;
    std::copy(z, z + vocab, values);
    std::nth_element(values, values + (p.top_k - 1), values + vocab, std::greater<double>());
    const double threshold = values[p.top_k - 1];
    for (int64_t v = 0; v < vocab; ++v) {
      if (z[v] < threshold) z[v] = kNegInf;
    }
  }

  double m = kNegInf;
  for (int64_t v = 0; v < vocab; ++v) m = std::max(m, z[v]);

  if (p.top_p < 1.0f) {
    int32_t* const order = s->order;
    int64_t kept = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      if (z[v] != kNegInf) order[kept++] = static_cast<int32_t>(v);
    }
    const double sum = ChunkedSum(
        vocab, [&](int64_t v) { return z[v] == kNegInf ? 0.0 : std::exp(z[v] - m); }, nullptr);
    const auto ranks_first = [z](int32_t a, int32_t b) {
      return z[a] > z[b] || (z[a] == z[b] && a < b);
    };
    // The walk usually stops among the most likely tokens: only a prefix is ordered first (its
    // members picked by nth_element, then sorted: the order a full sort gives there, since no
    // two ids rank equal), the rest only if the walk gets past it.
    int64_t sorted = std::min(kept, kTopPPrefix);
    if (sorted < kept) std::nth_element(order, order + sorted, order + kept, ranks_first);
    std::sort(order, order + sorted, ranks_first);
    const double top_p = p.top_p;
    double before = 0.0;
    int64_t keep = 0;
    while (keep < kept && (keep == 0 || before < top_p)) {
      if (keep == sorted) {
        std::sort(order + sorted, order + kept, ranks_first);
        sorted = kept;
      }
      before += std::exp(z[order[keep]] - m) / sum;
      ++keep;
    }
    for (int64_t i = keep; i < kept; ++i) z[order[i]] = kNegInf;
  }

  if (p.min_p > 0.0f) {
    // p_v / p_max = exp(z_v - m).
    const double min_p = p.min_p;
    for (int64_t v = 0; v < vocab; ++v) {
      if (z[v] != kNegInf && std::exp(z[v] - m) < min_p) z[v] = kNegInf;
    }
  }

  int64_t last = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (z[v] == kNegInf) continue;
    z[v] = std::exp(z[v] - m);
    if (z[v] > 0.0) last = v;
  }
  // The chunk sums go to `values` (free after top-k; a chunk per 1024 ids fits).
  double* const chunk_sums = s->values;
  const double sum = ChunkedSum(
      vocab, [&](int64_t v) { return z[v] == kNegInf ? 0.0 : z[v]; }, chunk_sums);
  // The smallest kept id whose cumulative sum (the chunk sums before its chunk, plus its
  // chunk's terms up to it) exceeds the target: cumulative sums never decrease, so it is in
  // the first chunk whose end exceeds it.
  const double target = SampleUniform(p.seed, p.step) * sum;
  int64_t chosen = last;
  double before = 0.0;
  for (int64_t c0 = 0; c0 < vocab; c0 += kSampleChunk) {
    const double chunk = chunk_sums[c0 / kSampleChunk];
    if (before + chunk > target) {
      double within = 0.0;
      const int64_t end = std::min(vocab, c0 + kSampleChunk);
      for (int64_t v = c0; v < end; ++v) {
        if (z[v] == kNegInf) continue;
        within += z[v];
        if (before + within > target) {
          chosen = v;
          break;
        }
      }
      break;
    }
    before += chunk;
  }
  return {static_cast<int32_t>(chosen), std::log(z[chosen]) - std::log(sum)};
}

double RawLogprob(const float* x, int64_t vocab, int64_t id) {
  double m = kNegInf;
  for (int64_t v = 0; v < vocab; ++v) m = std::max(m, static_cast<double>(x[v]));
  const double sum = ChunkedSum(
      vocab, [&](int64_t v) { return std::exp(static_cast<double>(x[v]) - m); }, nullptr);
  return (static_cast<double>(x[id]) - m) - std::log(sum);
}

}  // namespace

size_t CpuBackend::SampleWorkspaceBytes(int64_t rows, int64_t vocab) const {
  if (rows <= 0 || vocab <= 0) return 0;
  return (kScratchAlign - 1) +
         static_cast<size_t>(SampleThreads(num_threads(), rows, vocab)) * ThreadScratchBytes(vocab);
}

absl::Status CpuBackend::RunSample(const SampleArgs& args) {
  for (int64_t r = 0; r < args.rows; ++r) {
    const float* x = args.logits + r * args.ld;
    bool any_finite = false;
    for (int64_t v = 0; v < args.vocab; ++v) {
      if (std::isnan(x[v]) || x[v] == std::numeric_limits<float>::infinity()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sample: logits[", r, ", ", v, "]=", x[v], " is NaN or +inf"));
      }
      any_finite = any_finite || std::isfinite(x[v]);
    }
    if (!any_finite) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample: logits row ", r, " is all -inf (vocab=", args.vocab, ")"));
    }
  }
  // Validation guarantees SampleWorkspaceBytes(rows, vocab) bytes: after aligning the base, at
  // least one slot per thread. The cap only matters if OpenMP's default thread count changed
  // since (num_threads() = 0); the results do not depend on the thread count.
  const uintptr_t base = reinterpret_cast<uintptr_t>(args.workspace);
  const uintptr_t aligned = (base + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
  const size_t usable = args.workspace_bytes - static_cast<size_t>(aligned - base);
  const size_t per_thread = ThreadScratchBytes(args.vocab);
  const int threads = static_cast<int>(std::max<size_t>(
      1,
      std::min<size_t>(SampleThreads(num_threads(), args.rows, args.vocab), usable / per_thread)));
  char* const slots = reinterpret_cast<char*>(aligned);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    RowScratch scratch = CarveScratch(slots + omp_get_thread_num() * per_thread, args.vocab);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < args.rows; ++r) {
      const float* x = args.logits + r * args.ld;
      const int32_t* seen_begin = nullptr;
      const int32_t* seen_end = nullptr;
      if (args.seen_offsets != nullptr) {
        seen_begin = args.seen_ids + args.seen_offsets[r];
        seen_end = args.seen_ids + args.seen_offsets[r + 1];
      }
      const RowResult res =
          SampleRow(x, args.vocab, args.params[r], seen_begin, seen_end, &scratch);
      args.ids[r] = res.id;
      if (args.logprobs != nullptr) args.logprobs[r] = static_cast<float>(res.logprob);
      if (args.raw_logprobs != nullptr) {
        args.raw_logprobs[r] = static_cast<float>(RawLogprob(x, args.vocab, res.id));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
