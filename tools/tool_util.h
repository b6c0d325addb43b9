// Small helpers shared by the tool binaries: paths under `bazel run`, names for the trace's
// enums, timing.
#ifndef MOE_TOOLS_TOOL_UTIL_H_
#define MOE_TOOLS_TOOL_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/layers/moe/moe_block.h"

namespace moe::tools {

// A path the user typed: relative paths are taken from the directory `bazel run` was started
// in (BUILD_WORKING_DIRECTORY) when set, else from the current directory.
std::string ResolveUserPath(const std::string& path);

// A path inside the source tree: relative to BUILD_WORKSPACE_DIRECTORY under `bazel run`,
// else to the current directory (a checkout's root, or a test's runfiles root).
std::string WorkspacePath(const std::string& relative);

// Creates the directories leading to `file` (mkdir -p of its dirname). Status names the path.
absl::Status MakeParentDirs(const std::string& file);

// Writes `text` to `path` (replacing it). Status names the path.
absl::Status WriteTextFile(const std::string& path, absl::string_view text);

// "batched", "grouped", "none"; "in-place", "copied", "none".
absl::string_view ExpertPathName(ExpertPath p);
absl::string_view CombinePathName(CombinePath p);

// Monotonic seconds.
double NowSeconds();

// The median of timings (the mean of the middle two for an even count); 0 for none.
double Median(std::vector<double> v);

// "Intel Xeon ..." from /proc/cpuinfo's first "model name", or "unknown".
std::string CpuModelName();

// Whether /proc/cpuinfo's first "flags" line lists `flag` (e.g. "avx512_bf16", "amx_bf16").
bool CpuHasFlag(absl::string_view flag);

// The 1-minute load average from /proc/loadavg, or -1 if unreadable.
double LoadAverage1();

// Local time as "2025-11-23T11:37:00".
std::string LocalTimestamp();

}  // namespace moe::tools

#endif  // MOE_TOOLS_TOOL_UTIL_H_
