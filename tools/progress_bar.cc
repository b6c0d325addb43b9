#include "tools/progress_bar.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace moe::tools {
namespace {

double PerSecond(int64_t count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

}  // namespace

std::string FormatElapsed(double seconds) {
  // Tenths as an integer, so 59.96 s reads 1:00.0 and not 0:60.0.
  const int64_t tenths = std::llround(std::max(seconds, 0.0) * 10);
  const int64_t whole = tenths / 10;
  if (whole >= 3600) {
    return absl::StrFormat("%d:%02d:%02d", whole / 3600, whole / 60 % 60, whole % 60);
  }
  return absl::StrFormat("%d:%02d.%d", whole / 60, whole % 60, tenths % 10);
}

std::string RenderLoadLine(int64_t done, int64_t total, double elapsed_s, int bar_width) {
  total = std::max<int64_t>(total, 0);
  done = std::clamp<int64_t>(done, 0, total);
  const int width = std::max(bar_width, 1);
  const int filled = total > 0 ? static_cast<int>(done * width / total) : 0;
  return absl::StrFormat("loading [%s%s]  %d/%d steps  %s", std::string(filled, '#'),
                         std::string(width - filled, '.'), done, total, FormatElapsed(elapsed_s));
}

std::string RenderProgressLine(const ProgressCounts& counts, double elapsed_s, int bar_width) {
  const int64_t total = std::max<int64_t>(counts.total, 0);
  const int64_t done = std::clamp<int64_t>(counts.done, 0, total);
  const int width = std::max(bar_width, 1);
  const int filled = total > 0 ? static_cast<int>(done * width / total) : 0;
  return absl::StrFormat("[%s%s]  %d/%d requests  %d tokens  %.1f tok/s  %s",
                         std::string(filled, '#'), std::string(width - filled, '.'), done, total,
                         counts.generated_tokens, PerSecond(counts.generated_tokens, elapsed_s),
                         FormatElapsed(elapsed_s));
}

std::string RenderSummary(const ThroughputTotals& t) {
  return absl::StrFormat(
      "requests %d (%d failed), prompt tokens %d, generated tokens %d, wall %.2f s\n"
      "throughput: prefill+decode %.1f tok/s, generated %.1f tok/s\n",
      t.requests, t.failed, t.prompt_tokens, t.generated_tokens, t.wall_s,
      PerSecond(t.prompt_tokens + t.generated_tokens, t.wall_s),
      PerSecond(t.generated_tokens, t.wall_s));
}

}  // namespace moe::tools
