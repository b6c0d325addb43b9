#include "tools/tool_util.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moe::tools {
namespace {

std::string JoinUnder(const char* env, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  const char* base = std::getenv(env);
  if (base == nullptr || base[0] == '\0') return path;
  return absl::StrCat(base, "/", path);
}

}  // namespace

std::string ResolveUserPath(const std::string& path) {
  return JoinUnder("BUILD_WORKING_DIRECTORY", path);
}

std::string WorkspacePath(const std::string& relative) {
  return JoinUnder("BUILD_WORKSPACE_DIRECTORY", relative);
}

absl::Status MakeParentDirs(const std::string& file) {
  const size_t slash = file.rfind('/');
  if (slash == std::string::npos || slash == 0) return absl::OkStatus();
  const std::string dir = file.substr(0, slash);
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::PermissionDeniedError(
          absl::StrCat(prefix, ": cannot create directory: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteTextFile(const std::string& path, absl::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot open for writing: ", std::strerror(errno)));
  }
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::string_view ExpertPathName(ExpertPath p) {
  switch (p) {
    case ExpertPath::kBatched:
      return "batched";
    case ExpertPath::kGrouped:
      return "grouped";
    case ExpertPath::kNone:
      break;
  }
  return "none";
}

absl::string_view CombinePathName(CombinePath p) {
  switch (p) {
    case CombinePath::kInPlace:
      return "in-place";
    case CombinePath::kCopied:
      return "copied";
    case CombinePath::kNone:
      break;
  }
  return "none";
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "model name")) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return "unknown";
}

bool CpuHasFlag(absl::string_view flag) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "flags")) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) return false;
    for (absl::string_view f : absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipEmpty())) {
      if (f == flag) return true;
    }
    return false;
  }
  return false;
}

double LoadAverage1() {
  std::ifstream in("/proc/loadavg");
  double load = -1.0;
  if (!(in >> load)) return -1.0;
  return load;
}

std::string LocalTimestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return buf;
}

}  // namespace moe::tools
