// moe_server's Prometheus metrics (prometheus-cpp): what the RPC handlers count and observe,
// plus the engine's own state read from Engine::Stats at every scrape.
//
//   moe_requests_total{method, outcome}   finished RPCs by gRPC status ("ok", "cancelled" ...)
//   moe_rejections_total{reason}          refused before the engine: invalid_argument,
//                                         queue_full, unauthenticated, unavailable
//   moe_queue_depth, moe_running_requests admitted and waiting / running in the engine
//   moe_prefill_tokens_total, moe_decode_tokens_total
//   moe_time_to_first_token_seconds, moe_inter_token_latency_seconds   histograms, measured
//                                         where the handler receives the engine's tokens
//   moe_kv_blocks_used, moe_kv_blocks_free
//   moe_expert_tokens_total{layer, expert} rows routed to each expert of each MoE layer (a token
//                                         counts once per chosen expert): EngineStats::
//                                         expert_tokens, when the engine counts them (every CPU
//                                         step; on a GPU only steps of more than 64 tokens)
//
// Thread-safe.
#ifndef MOE_SERVER_METRICS_H_
#define MOE_SERVER_METRICS_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "engine/api/engine.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace moe::server {

class ServerMetrics {
 public:
  ServerMetrics();

  // The engine whose Stats the engine gauges show from now on (it must outlive the metrics'
  // scrapes, or be reset to null first).
  void SetEngine(const Engine* engine);

  void CountRequest(absl::string_view method, absl::string_view outcome);
  void CountRejection(absl::string_view reason);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);

  // Every metric in Prometheus' text format (what the HTTP endpoint serves).
  std::string Text() const;

 private:
  // Copies Engine::Stats into the engine gauges and counters.
  void Refresh() const;
  // Adds what `counts` (EngineStats::expert_tokens) grew by since the last scrape.
  void RefreshExpertTokens(const std::vector<std::vector<int64_t>>& counts) const;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejections_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& inter_token_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& running_;
  prometheus::Counter& prefill_tokens_;
  prometheus::Counter& decode_tokens_;
  prometheus::Gauge& kv_blocks_used_;
  prometheus::Gauge& kv_blocks_free_;
  prometheus::Family<prometheus::Counter>& expert_tokens_;

  mutable std::mutex mu_;  // the engine pointer and the token counts last copied
  const Engine* engine_ = nullptr;
  mutable int64_t prefill_seen_ = 0;
  mutable int64_t decode_seen_ = 0;
  mutable std::vector<std::vector<int64_t>> expert_tokens_seen_;
};

}  // namespace moe::server

#endif  // MOE_SERVER_METRICS_H_
