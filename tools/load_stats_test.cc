// moe_load's numbers: nearest-rank percentiles at their exact ranks, merging, and the JSON
// reading back with every field.
#include "tools/load_stats.h"

#include "engine/core/json.h"
#include "gtest/gtest.h"

namespace moe::tools {
namespace {

TEST(LoadStatsTest, PercentilesAreNearestRank) {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i);  // unsorted on purpose
  const Percentiles p = ComputePercentiles(samples);
  EXPECT_EQ(p.count, 100);
  EXPECT_EQ(p.p50, 50);
  EXPECT_EQ(p.p90, 90);
  EXPECT_EQ(p.p99, 99);
  EXPECT_DOUBLE_EQ(p.mean, 50.5);
}

TEST(LoadStatsTest, FewSamplesAndNone) {
  const Percentiles one = ComputePercentiles({0.25});
  EXPECT_EQ(one.p50, 0.25);
  EXPECT_EQ(one.p99, 0.25);
  const Percentiles three = ComputePercentiles({3, 1, 2});
  EXPECT_EQ(three.p50, 2);  // rank ceil(1.5) = 2
  EXPECT_EQ(three.p90, 3);
  const Percentiles none = ComputePercentiles({});
  EXPECT_EQ(none.count, 0);
  EXPECT_EQ(none.p99, 0);
}

TEST(LoadStatsTest, MergeAddsCountsFailuresAndSamples) {
  LoadSamples a;
  a.generate_ok = 2;
  a.tokens = 10;
  a.failures["UNAVAILABLE"] = 1;
  a.ttft = {0.1};
  LoadSamples b;
  b.forward_ok = 3;
  b.failures["UNAVAILABLE"] = 2;
  b.failures["INTERNAL"] = 1;
  b.ttft = {0.2, 0.3};
  b.forward_e2e = {0.05};
  a.Merge(b);
  EXPECT_EQ(a.generate_ok, 2);
  EXPECT_EQ(a.forward_ok, 3);
  EXPECT_EQ(a.failures["UNAVAILABLE"], 3);
  EXPECT_EQ(a.failures["INTERNAL"], 1);
  EXPECT_EQ(a.ttft.size(), 3u);
  EXPECT_EQ(a.forward_e2e.size(), 1u);
}

TEST(LoadStatsTest, JsonReadsBack) {
  LoadSettings settings{"127.0.0.1:1", 4, 2.5, 0.25, 31, 8, "qwen3_moe", "cpu", "f32"};
  LoadSamples s;
  s.generate_ok = 4;
  s.forward_ok = 1;
  s.tokens = 32;
  s.failures["RESOURCE_EXHAUSTED"] = 2;
  s.ttft = {0.001, 0.003};
  s.inter_token = {0.002};
  s.generate_e2e = {0.02};
  s.forward_e2e = {0.01};
  auto json =
      ParseJson(FormatLoadJson(settings, s, 2.0, "AMD EPYC", "2026-01-01T00:00:00"), "load.json");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->Find("machine")->Find("cpu")->string(), "AMD EPYC");
  EXPECT_EQ(json->Find("settings")->Find("clients")->number(), 4);
  EXPECT_EQ(json->Find("generated_tokens")->number(), 32);
  EXPECT_EQ(json->Find("failed")->Find("RESOURCE_EXHAUSTED")->number(), 2);
  EXPECT_EQ(json->Find("throughput")->Find("generated_tok_per_s")->number(), 16);
  const JsonValue* ttft = json->Find("latency")->Find("ttft");
  EXPECT_EQ(ttft->Find("count")->number(), 2);
  EXPECT_EQ(ttft->Find("p99_ms")->number(), 3);
  EXPECT_EQ(json->Find("latency")->Find("forward_e2e")->Find("p50_ms")->number(), 10);
  EXPECT_NE(FormatLoadText(settings, s, 2.0).find("failed with RESOURCE_EXHAUSTED: 2"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::tools
