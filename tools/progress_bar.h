// Text for moe_generate's progress on stderr: the one-line bar redrawn while requests run and
// the throughput summary printed at the end. Pure functions of counts and seconds, so the
// rendering is tested without an engine or a terminal; the caller decides when to draw.
#ifndef MOE_TOOLS_PROGRESS_BAR_H_
#define MOE_TOOLS_PROGRESS_BAR_H_

#include <cstdint>
#include <string>

namespace moe::tools {

struct ProgressCounts {
  int64_t done = 0;              // requests finished (or rejected)
  int64_t total = 0;             // requests submitted
  int64_t generated_tokens = 0;  // tokens generated so far, all requests
};

// "[#########...........]  12/40 requests  1534 tokens  312.4 tok/s  0:04.9", the bar
// `bar_width` characters wide between the brackets; done is clamped to [0, total], and
// tok/s is 0 until some time has passed. No '\r' or newline.
std::string RenderProgressLine(const ProgressCounts& counts, double elapsed_s, int bar_width = 24);

// "loading [#####...........]  3/49 steps  0:04.9": the weights being loaded (steps are the
// embedding + lm_head, then each layer); done clamped to [0, total]. No '\r' or newline.
std::string RenderLoadLine(int64_t done, int64_t total, double elapsed_s, int bar_width = 24);

// Seconds as "m:ss.s" under an hour, "h:mm:ss" from one hour on; negative counts as 0.
std::string FormatElapsed(double seconds);

struct ThroughputTotals {
  int64_t requests = 0;  // result lines written
  int64_t failed = 0;    // of those, error lines
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double wall_s = 0.0;  // from the first submit to the last result
};

// Two lines, each ending in '\n':
//   "requests 40 (1 failed), prompt tokens 1234, generated tokens 5678, wall 12.31 s\n"
//   "throughput: prefill+decode 561.5 tok/s, generated 461.3 tok/s\n"
std::string RenderSummary(const ThroughputTotals& totals);

}  // namespace moe::tools

#endif  // MOE_TOOLS_PROGRESS_BAR_H_
