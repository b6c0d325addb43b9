#include "server/metrics.h"

#include <sstream>
#include <vector>

#include "prometheus/text_serializer.h"

namespace moe::server {

namespace {

// Seconds: 1 ms .. 30 s, roughly x2.5 per bucket.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  return *buckets;
}

}  // namespace

ServerMetrics::ServerMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("moe_requests_total")
                    .Help("Finished RPCs by method and outcome (gRPC status)")
                    .Register(*registry_)),
      rejections_(prometheus::BuildCounter()
                      .Name("moe_rejections_total")
                      .Help("Requests refused before reaching the engine, by reason")
                      .Register(*registry_)),
      ttft_(prometheus::BuildHistogram()
                .Name("moe_time_to_first_token_seconds")
                .Help("From a Generate request's admission to its first token")
                .Register(*registry_)
                .Add({}, LatencyBuckets())),
      inter_token_(prometheus::BuildHistogram()
                       .Name("moe_inter_token_latency_seconds")
                       .Help("Between consecutive tokens of one request")
                       .Register(*registry_)
                       .Add({}, LatencyBuckets())),
      queue_depth_(prometheus::BuildGauge()
                       .Name("moe_queue_depth")
                       .Help("Requests admitted and waiting for the engine")
                       .Register(*registry_)
                       .Add({})),
      running_(prometheus::BuildGauge()
                   .Name("moe_running_requests")
                   .Help("Requests running in the engine")
                   .Register(*registry_)
                   .Add({})),
      prefill_tokens_(prometheus::BuildCounter()
                          .Name("moe_prefill_tokens_total")
                          .Help("Prompt tokens computed")
                          .Register(*registry_)
                          .Add({})),
      decode_tokens_(prometheus::BuildCounter()
                         .Name("moe_decode_tokens_total")
                         .Help("Tokens generated")
                         .Register(*registry_)
                         .Add({})),
      kv_blocks_used_(prometheus::BuildGauge()
                          .Name("moe_kv_blocks_used")
                          .Help("KV cache blocks held by requests")
                          .Register(*registry_)
                          .Add({})),
      kv_blocks_free_(prometheus::BuildGauge()
                          .Name("moe_kv_blocks_free")
                          .Help("KV cache blocks free")
                          .Register(*registry_)
                          .Add({})),
      expert_tokens_(prometheus::BuildCounter()
                         .Name("moe_expert_tokens_total")
                         .Help("Rows routed to each expert of each MoE layer (a token counts "
                               "once per chosen expert); on a GPU only steps over 64 tokens")
                         .Register(*registry_)) {}

void ServerMetrics::SetEngine(const Engine* engine) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = engine;
}

void ServerMetrics::CountRequest(absl::string_view method, absl::string_view outcome) {
  requests_.Add({{"method", std::string(method)}, {"outcome", std::string(outcome)}})
      .Increment();
}

void ServerMetrics::CountRejection(absl::string_view reason) {
  rejections_.Add({{"reason", std::string(reason)}}).Increment();
}

void ServerMetrics::ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }

void ServerMetrics::ObserveInterTokenLatency(double seconds) { inter_token_.Observe(seconds); }

void ServerMetrics::Refresh() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ == nullptr) return;
  const EngineStats s = engine_->Stats();
  queue_depth_.Set(static_cast<double>(s.waiting));
  running_.Set(static_cast<double>(s.running));
  kv_blocks_used_.Set(static_cast<double>(s.kv_blocks_used));
  kv_blocks_free_.Set(static_cast<double>(s.kv_blocks_total - s.kv_blocks_used));
  // The engine counts totals; Prometheus counters only go up by increments.
  prefill_tokens_.Increment(static_cast<double>(s.prompt_tokens - prefill_seen_));
  decode_tokens_.Increment(static_cast<double>(s.generated_tokens - decode_seen_));
  prefill_seen_ = s.prompt_tokens;
  decode_seen_ = s.generated_tokens;
  RefreshExpertTokens(s.expert_tokens);
}

void ServerMetrics::RefreshExpertTokens(const std::vector<std::vector<int64_t>>& counts) const {
  expert_tokens_seen_.resize(counts.size());
  for (size_t layer = 0; layer < counts.size(); ++layer) {
    std::vector<int64_t>& seen = expert_tokens_seen_[layer];
    seen.resize(counts[layer].size(), 0);
    for (size_t expert = 0; expert < seen.size(); ++expert) {
      // Every expert of a MoE layer is listed from the first scrape, at 0 until routed to.
      expert_tokens_
          .Add({{"layer", std::to_string(layer)}, {"expert", std::to_string(expert)}})
          .Increment(static_cast<double>(counts[layer][expert] - seen[expert]));
      seen[expert] = counts[layer][expert];
    }
  }
}

std::string ServerMetrics::Text() const {
  // The engine's values are copied in at each scrape: current without a polling thread.
  Refresh();
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace moe::server
