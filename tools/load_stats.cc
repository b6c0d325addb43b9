#include "tools/load_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/core/json.h"

namespace moe::tools {
namespace {

double NearestRank(const std::vector<double>& sorted, double percent) {
  const size_t rank = static_cast<size_t>(std::ceil(percent / 100.0 * sorted.size()));
  return sorted[std::max<size_t>(rank, 1) - 1];
}

double Rate(int64_t n, double wall_s) { return wall_s > 0 ? n / wall_s : 0; }

std::string TextLine(const char* name, const Percentiles& p) {
  return absl::StrFormat("  %-12s n=%-7d p50 %8.2f ms  p90 %8.2f ms  p99 %8.2f ms  mean %8.2f ms\n",
                         name, p.count, 1e3 * p.p50, 1e3 * p.p90, 1e3 * p.p99, 1e3 * p.mean);
}

std::string JsonPercentiles(const Percentiles& p) {
  return absl::StrCat("{\"count\": ", p.count, ", \"p50_ms\": ", JsonRounded(1e3 * p.p50, 4),
                      ", \"p90_ms\": ", JsonRounded(1e3 * p.p90, 4),
                      ", \"p99_ms\": ", JsonRounded(1e3 * p.p99, 4),
                      ", \"mean_ms\": ", JsonRounded(1e3 * p.mean, 4), "}");
}

int64_t FailureCount(const LoadSamples& s) {
  int64_t n = 0;
  for (const auto& [code, count] : s.failures) n += count;
  return n;
}

}  // namespace

void LoadSamples::Merge(const LoadSamples& o) {
  generate_ok += o.generate_ok;
  forward_ok += o.forward_ok;
  tokens += o.tokens;
  for (const auto& [code, count] : o.failures) failures[code] += count;
  ttft.insert(ttft.end(), o.ttft.begin(), o.ttft.end());
  inter_token.insert(inter_token.end(), o.inter_token.begin(), o.inter_token.end());
  generate_e2e.insert(generate_e2e.end(), o.generate_e2e.begin(), o.generate_e2e.end());
  forward_e2e.insert(forward_e2e.end(), o.forward_e2e.begin(), o.forward_e2e.end());
}

Percentiles ComputePercentiles(std::vector<double> samples) {
  Percentiles p;
  if (samples.empty()) return p;
  std::sort(samples.begin(), samples.end());
  p.count = static_cast<int64_t>(samples.size());
  p.p50 = NearestRank(samples, 50);
  p.p90 = NearestRank(samples, 90);
  p.p99 = NearestRank(samples, 99);
  p.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / samples.size();
  return p;
}

std::string FormatLoadText(const LoadSettings& settings, const LoadSamples& s, double wall_s) {
  std::string t = absl::StrFormat(
      "moe_load: %s, %d clients for %.1f s (wall %.2f s), forward fraction %.2f, prompt %d "
      "tokens, max_new_tokens %d\n",
      settings.target, settings.clients, settings.duration_s, wall_s, settings.forward_fraction,
      settings.prompt_tokens, settings.max_new_tokens);
  absl::StrAppendFormat(&t,
                        "  Generate ok %d (%.2f req/s, %.1f generated tok/s), Forward ok %d "
                        "(%.2f req/s), failed %d\n",
                        s.generate_ok, Rate(s.generate_ok, wall_s), Rate(s.tokens, wall_s),
                        s.forward_ok, Rate(s.forward_ok, wall_s), FailureCount(s));
  for (const auto& [code, count] : s.failures) {
    absl::StrAppendFormat(&t, "  failed with %s: %d\n", code, count);
  }
  t += TextLine("ttft", ComputePercentiles(s.ttft));
  t += TextLine("inter-token", ComputePercentiles(s.inter_token));
  t += TextLine("generate e2e", ComputePercentiles(s.generate_e2e));
  t += TextLine("forward e2e", ComputePercentiles(s.forward_e2e));
  return t;
}

std::string FormatLoadJson(const LoadSettings& settings, const LoadSamples& s, double wall_s,
                           const std::string& cpu, const std::string& date) {
  std::string j = "{\n  \"tool\": \"moe_load\",\n";
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(date), ",\n");
  absl::StrAppend(&j, "  \"machine\": {\"cpu\": ", JsonQuote(cpu), "},\n");
  absl::StrAppend(&j, "  \"server\": {\"target\": ", JsonQuote(settings.target),
                  ", \"family\": ", JsonQuote(settings.model_family),
                  ", \"backend\": ", JsonQuote(settings.backend),
                  ", \"dtype\": ", JsonQuote(settings.dtype), "},\n");
  absl::StrAppend(&j, "  \"settings\": {\"clients\": ", settings.clients,
                  ", \"duration_s\": ", JsonNumber(settings.duration_s),
                  ", \"forward_fraction\": ", JsonNumber(settings.forward_fraction),
                  ", \"prompt_tokens\": ", settings.prompt_tokens,
                  ", \"max_new_tokens\": ", settings.max_new_tokens, "},\n");
  absl::StrAppend(&j, "  \"wall_s\": ", JsonRounded(wall_s, 4), ",\n");
  absl::StrAppend(&j, "  \"generate_ok\": ", s.generate_ok, ",\n  \"forward_ok\": ", s.forward_ok,
                  ",\n  \"generated_tokens\": ", s.tokens, ",\n");
  absl::StrAppend(&j, "  \"failed\": {");
  bool first = true;
  for (const auto& [code, count] : s.failures) {
    absl::StrAppend(&j, first ? "" : ", ", JsonQuote(code), ": ", count);
    first = false;
  }
  absl::StrAppend(&j, "},\n");
  absl::StrAppend(&j, "  \"throughput\": {\"generate_req_per_s\": ",
                  JsonRounded(Rate(s.generate_ok, wall_s), 4),
                  ", \"generated_tok_per_s\": ", JsonRounded(Rate(s.tokens, wall_s), 4),
                  ", \"forward_req_per_s\": ", JsonRounded(Rate(s.forward_ok, wall_s), 4), "},\n");
  absl::StrAppend(
      &j, "  \"latency\": {\n    \"ttft\": ", JsonPercentiles(ComputePercentiles(s.ttft)),
      ",\n    \"inter_token\": ", JsonPercentiles(ComputePercentiles(s.inter_token)),
      ",\n    \"generate_e2e\": ", JsonPercentiles(ComputePercentiles(s.generate_e2e)),
      ",\n    \"forward_e2e\": ", JsonPercentiles(ComputePercentiles(s.forward_e2e)), "\n  }\n}\n");
  return j;
}

}  // namespace moe::tools
