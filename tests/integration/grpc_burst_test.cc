// Hard edges 6 and 7: 64 concurrent clients, mixed greedy Generate / Forward of odd prompt
// lengths, against a real server on 127.0.0.1: no errors, no lost or duplicated tokens, every
// result bit-identical to the same request run alone through the engine; and five bursts in a
// row: resident memory bounded after the first, KV blocks, engine slots and admitted RPCs back
// to zero after each.
//
// CI runs short bursts (edge 6: 3 s; edge 7: 5 x 1.5 s). The full 20 s run:
//   bazel test //tests/integration:grpc_burst_test --test_env=MOE_BURST_SECONDS=20
// (every burst then lasts 20 s: about 2 minutes for the two tests).
#include <cstdio>

#include "gtest/gtest.h"
#include "tests/integration/burst_workload.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {
namespace {

constexpr int kClients = 64;
constexpr int kPoolSize = 96;
// Growth of the test process's resident set allowed between the end of the first burst and the
// end of each later one (the first warms allocator arenas, gRPC's thread pool and the engine's
// workspaces; later bursts reuse them).
constexpr int64_t kRssGrowthBound = 32 << 20;

server::ServerOptions BurstServer() {
  server::ServerOptions o;
  o.service.max_queue = 3 * kClients;  // a Forward of 3 sequences takes 3 places: never full
  o.metrics_port = 0;
  return o;
}

EngineOptions BurstEngine() {
  EngineOptions e;
  e.max_seqs = 16;
  e.max_batch_tokens = 64;
  e.kv_cache_bytes = 8 << 20;
  e.threads = 1;
  return e;
}

void ExpectClean(const BurstReport& report) {
  EXPECT_EQ(report.error_count, 0);
  for (const std::string& e : report.errors) ADD_FAILURE() << e;
  EXPECT_GT(report.generate_calls, 0);
  EXPECT_GT(report.forward_calls, 0);
}

// Everything a burst held is released: admitted RPCs, engine slots and queue, KV blocks (seen
// through the engine and through the metrics endpoint).
void ExpectDrained(TestServer& t) {
  EXPECT_TRUE(WaitFor([&] {
    const EngineStats s = t.engine->Stats();
    return t.server->service().in_flight() == 0 && s.running == 0 && s.waiting == 0 &&
           s.kv_blocks_used == 0;
  }));
  const std::string metrics = HttpGet(t.server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "moe_kv_blocks_used"), 0);
  EXPECT_EQ(MetricValue(metrics, "moe_running_requests"), 0);
  EXPECT_EQ(MetricValue(metrics, "moe_queue_depth"), 0);
  EXPECT_GT(MetricValue(metrics, "moe_kv_blocks_free"), 0);
}

TEST(GrpcBurstTest, SixtyFourClientsMixedCallsAreBitIdenticalToAlone) {
  auto t = StartServer(BurstServer(), BurstEngine());
  ASSERT_NE(t, nullptr);
  std::vector<BurstRequest> pool = MakeBurstPool(kPoolSize);
  ASSERT_TRUE(ComputeAloneResults(*t->engine, pool));

  const BurstReport report = RunBurst(*t->stub, pool, kClients, BurstDuration(3));
  ExpectClean(report);
  std::printf("burst: %lld Generate (%lld tokens), %lld Forward\n",
              static_cast<long long>(report.generate_calls), static_cast<long long>(report.tokens),
              static_cast<long long>(report.forward_calls));
  ExpectDrained(*t);
  const std::string metrics = HttpGet(t->server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, R"(moe_requests_total{method="Generate",outcome="ok"})"),
            report.generate_calls);
  EXPECT_EQ(MetricValue(metrics, R"(moe_requests_total{method="Forward",outcome="ok"})"),
            report.forward_calls);
}

TEST(GrpcBurstTest, FiveBurstsKeepMemoryBoundedAndReleaseEverything) {
  auto t = StartServer(BurstServer(), BurstEngine());
  ASSERT_NE(t, nullptr);
  std::vector<BurstRequest> pool = MakeBurstPool(kPoolSize);
  ASSERT_TRUE(ComputeAloneResults(*t->engine, pool));

  int64_t first_rss = 0;
  for (int burst = 0; burst < 5; ++burst) {
    SCOPED_TRACE("burst " + std::to_string(burst));
    ExpectClean(RunBurst(*t->stub, pool, kClients, BurstDuration(1.5)));
    ExpectDrained(*t);
    const int64_t rss = ResidentBytes();
    ASSERT_GT(rss, 0);
    std::printf("burst %d: resident %.1f MiB\n", burst, rss / 1048576.0);
    if (burst == 0) {
      first_rss = rss;
    } else {
      EXPECT_LE(rss, first_rss + kRssGrowthBound);
    }
  }
}

}  // namespace
}  // namespace moe::testing
