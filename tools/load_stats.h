// moe_load's numbers: what the clients record (latency samples, counts, failures by gRPC
// status) and the summary printed and written as JSON. Percentiles are nearest-rank: pN is the
// smallest sample with at least N% of the samples at or below it. Not thread-safe: each client
// fills its own LoadSamples, merged at the end.
#ifndef MOE_TOOLS_LOAD_STATS_H_
#define MOE_TOOLS_LOAD_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::tools {

struct LoadSamples {
  int64_t generate_ok = 0;
  int64_t forward_ok = 0;
  int64_t tokens = 0;                       // generated tokens received
  std::map<std::string, int64_t> failures;  // by gRPC status code name
  // Seconds.
  std::vector<double> ttft;         // Generate: call start to the first token
  std::vector<double> inter_token;  // Generate: gap between messages / tokens in the later one
  std::vector<double> generate_e2e;
  std::vector<double> forward_e2e;

  void Merge(const LoadSamples& other);
};

struct Percentiles {
  int64_t count = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double mean = 0;
};

// All zero for no samples.
Percentiles ComputePercentiles(std::vector<double> samples);

// The run's settings, as the JSON records them.
struct LoadSettings {
  std::string target;
  int64_t clients = 0;
  double duration_s = 0;
  double forward_fraction = 0;
  int64_t prompt_tokens = 0;
  int64_t max_new_tokens = 0;
  std::string model_family;
  std::string backend;
  std::string dtype;
};

// `wall_s`: from the first call's start to the last call's end.
std::string FormatLoadText(const LoadSettings& settings, const LoadSamples& samples, double wall_s);
std::string FormatLoadJson(const LoadSettings& settings, const LoadSamples& samples, double wall_s,
                           const std::string& cpu, const std::string& date);

}  // namespace moe::tools

#endif  // MOE_TOOLS_LOAD_STATS_H_
