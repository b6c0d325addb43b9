// The moe.v1.MoeService handlers over one moe::Engine (sync gRPC: one thread per call).
//
// Every call goes through the same gate, in order: the server's state (UNAVAILABLE while the
// model loads or the server drains), the bearer token (UNAUTHENTICATED), validation
// (INVALID_ARGUMENT naming field and limit; nothing reaches the engine) and the admission queue
// (RESOURCE_EXHAUSTED at once when full). Each refusal counts in moe_rejections_total, each
// finished call in moe_requests_total.
//
// While a request runs its handler waits for the engine's tokens and, every few milliseconds,
// for the call's end: a passed deadline (DEADLINE_EXCEEDED), a client cancel (CANCELLED) or
// the end of the shutdown grace period (UNAVAILABLE naming the shutdown) cancel the request in
// the engine, which frees its KV blocks and slot after the current step; nothing more is
// written. A request whose deadline passes while it waits in the engine's queue is cancelled
// there and never runs. An engine step that fails ends its requests with INTERNAL; the engine
// goes on with the others (the server stays SERVING). Forward runs to its end once admitted
// (Engine::Forward has no cancel; its sequences are at most max_context tokens each).
//
// Thread-safe.
#ifndef MOE_SERVER_MOE_SERVICE_H_
#define MOE_SERVER_MOE_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/api/engine.h"
#include "grpcpp/grpcpp.h"
#include "proto/moe.grpc.pb.h"
#include "server/admission.h"
#include "server/engine_call.h"
#include "server/metrics.h"
#include "server/validation.h"

namespace moe::server {

struct ServiceOptions {
  int64_t max_seqs = 64;             // the engine's; admission capacity = max_seqs + max_queue
  int64_t max_queue = 64;            // >= 0
  int64_t max_batch_requests = 64;   // >= 1
  int64_t max_message_bytes = 4 << 20;  // reported by GetModelInfo; gRPC enforces it
  std::string bearer_token;          // empty: no token asked
};

class MoeService final : public v1::MoeService::Service {
 public:
  MoeService(ServiceOptions options, ServerMetrics* metrics);

  // Serving from now on. The engine must outlive every call (Drain first, then destroy it).
  void SetEngine(Engine* engine);
  // New calls get UNAVAILABLE from now on; running ones may go on until `grace_end`, then end
  // with UNAVAILABLE naming the shutdown.
  void StartDrain(std::chrono::steady_clock::time_point grace_end);
  // Admitted requests not yet finished (0 once every call has returned).
  int64_t in_flight() const { return admission_.in_flight(); }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status GenerateBatch(grpc::ServerContext* context,
                             const v1::GenerateBatchRequest* request,
                             v1::GenerateBatchResponse* response) override;
  grpc::Status Forward(grpc::ServerContext* context, const v1::ForwardRequest* request,
                       v1::ForwardResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  enum class State { kLoading, kServing, kDraining };
  using EventSink = std::function<bool(size_t call, const std::vector<TimedEvent>& events)>;

  // The gate before the engine: state, token, then `validation` (already computed), then
  // admission of n requests. OK means n places are held (release with admission_.Release).
  grpc::Status Enter(const grpc::ServerContext& context, const absl::Status& validation,
                     int64_t n);
  // Runs the calls until each has finished, handing their events to `sink` (false: the client
  // is gone). Returns OK, or the status that ended them early (the calls are then cancelled by
  // their destructors).
  grpc::Status Pump(grpc::ServerContext* context, std::vector<std::unique_ptr<EngineCall>>& calls,
                    std::chrono::steady_clock::time_point start, const EventSink& sink);
  grpc::Status DoGenerate(grpc::ServerContext* context, const v1::GenerateRequest& request,
                          grpc::ServerWriter<v1::GenerateResponse>* writer);
  grpc::Status DoGenerateBatch(grpc::ServerContext* context,
                               const v1::GenerateBatchRequest& request,
                               v1::GenerateBatchResponse* response);
  grpc::Status DoForward(grpc::ServerContext* context, const v1::ForwardRequest& request,
                         v1::ForwardResponse* response);
  // Counts the outcome of a finished call.
  grpc::Status Finish(const char* method, grpc::Status status);

  const ServiceOptions options_;
  ServerMetrics* metrics_;
  Admission admission_;
  std::atomic<State> state_{State::kLoading};
  std::atomic<Engine*> engine_{nullptr};
  RequestLimits limits_;  // set with the engine, read only after state_ says serving
  std::atomic<int64_t> grace_end_ns_{0};  // steady_clock, valid while draining
};

}  // namespace moe::server

#endif  // MOE_SERVER_MOE_SERVICE_H_
