// Bincount (exact integer counts) and the dispatch order (a stable counting sort by expert).
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {
namespace {

// Counts ids[begin, end) into hist (not cleared here). Returns the first position holding an
// id outside [0, num_bins), or end.
int64_t CountRange(const int32_t* ids, int64_t begin, int64_t end, int64_t num_bins,
                   int64_t* hist) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= num_bins) return i;
    ++hist[id];
  }
  return end;
}

absl::Status BadId(absl::string_view op, int64_t pos, int32_t id, absl::string_view bound) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ids[", pos, "]=", id, " is outside [0, ", bound, ")"));
}

}  // namespace

absl::Status CpuBackend::RunBincount(const BincountArgs& args) {
  const int64_t n = args.n;
  const int64_t num_bins = args.num_bins;
  std::memset(args.counts, 0, sizeof(int64_t) * num_bins);
  // Per-thread histograms merged by integer addition: exact and independent of the split.
  // Only worth it when the ids far outnumber the bins.
  const int threads = num_bins * 16 > n ? 1 : cpu_kernels::ThreadsFor(num_threads(), n / 4);
  int64_t bad = n;
  if (threads == 1) {
    bad = CountRange(args.ids, 0, n, num_bins, args.counts);
  } else {
    std::unique_ptr<int64_t[]> hists(new int64_t[threads * num_bins]());
    std::unique_ptr<int64_t[]> first_bad(new int64_t[threads]);
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
      const int part = omp_get_thread_num();
      const int parts = omp_get_num_threads();
      if (part == 0) used = parts;
      int64_t begin, end;
      cpu_kernels::ChunkRange(n, parts, part, &begin, &end);
      const int64_t stop =
          CountRange(args.ids, begin, end, num_bins, hists.get() + part * num_bins);
      first_bad[part] = stop < end ? stop : n;
    }
    for (int p = 0; p < used; ++p) {
      if (first_bad[p] < bad) bad = first_bad[p];
      const int64_t* hist = hists.get() + p * num_bins;
      for (int64_t b = 0; b < num_bins; ++b) args.counts[b] += hist[b];
    }
  }
  if (bad < n) return BadId("bincount", bad, args.ids[bad], absl::StrCat("num_bins=", num_bins));
  return absl::OkStatus();
}

// Serial: one pass over n int32 slots is far cheaper than the GEMMs it feeds, and a parallel
// stable counting sort needs per-thread histograms of num_experts entries and a second pass.
absl::Status CpuBackend::RunExpertOrder(const ExpertOrderArgs& args) {
  constexpr absl::string_view kOp = "expert_order";
  const int64_t n = args.n;
  const int64_t num_experts = args.num_experts;
  // next[e]: the row the next slot of expert e goes to; end[e]: one past expert e's rows.
  cpu_kernels::Scratch<int64_t, 1024> next(num_experts);
  cpu_kernels::Scratch<int64_t, 1024> end(num_experts);
  int64_t total = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t c = args.counts[e];
    if (c < 0 || c > n - total) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": counts[", e, "]=", c, " is negative or makes the counts exceed n=", n));
    }
    next[e] = total;
    total += c;
    end[e] = total;
  }
  if (total != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": counts sum to ", total, ", expected n=", n));
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = args.ids[i];
    if (id < 0 || id >= num_experts) {
      return BadId(kOp, i, id, absl::StrCat("num_experts=", num_experts));
    }
    const int64_t row = next[id]++;
    if (row >= end[id]) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": expert ", id, " occurs more often than counts[", id, "]=", args.counts[id]));
    }
    args.sorted_slots[row] = static_cast<int32_t>(i);
    args.slot_to_row[i] = static_cast<int32_t>(row);
  }
  return absl::OkStatus();
}

}  // namespace moe
