// MoeServer: the gRPC server of moe_server, in the same process as the engine. Start binds the
// port at once (health NOT_SERVING, calls UNAVAILABLE while the model loads); SetEngine makes it
// SERVING; Drain is the SIGTERM path (health NOT_SERVING, new calls UNAVAILABLE, running calls
// get the grace period, then the listener stops). Also serves grpc.health.v1, server
// reflection (unless switched off) and, on metrics_port, Prometheus metrics over HTTP.
#ifndef MOE_SERVER_SERVER_H_
#define MOE_SERVER_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/api/engine.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/moe_service.h"

namespace moe::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int64_t port = 50051;  // 0: an ephemeral port (see MoeServer::port)
  bool reflection = true;
  int64_t max_message_bytes = 4 << 20;  // received messages; larger ones: RESOURCE_EXHAUSTED
  int64_t metrics_port = -1;            // -1: no metrics endpoint; 0: ephemeral
  // TLS: PEM files. cert + key turn TLS on; client_ca also asks for and verifies a client
  // certificate (mutual TLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  ServiceOptions service;
};

class MoeServer {
 public:
  // Binds and starts serving (NOT_SERVING). Errors name the flag, file or address:
  // InvalidArgument for bad TLS settings, NotFound for an unreadable PEM file, Unavailable
  // when host:port (or the metrics port) cannot be bound.
  static absl::StatusOr<std::unique_ptr<MoeServer>> Start(const ServerOptions& options);
  ~MoeServer();  // Drain(0) if not drained

  // SERVING with this engine (which must outlive the server or its Drain).
  void SetEngine(Engine* engine);
  // Health NOT_SERVING, new calls UNAVAILABLE, waits until the running calls finish or `grace`
  // passes (they then end with UNAVAILABLE naming the shutdown), then stops the server.
  void Drain(std::chrono::milliseconds grace);

  int port() const { return port_; }
  // 0 without a metrics endpoint.
  int metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }
  ServerMetrics& metrics() { return *metrics_; }
  MoeService& service() { return *service_; }

 private:
  MoeServer() = default;

  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<MoeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  int port_ = 0;
  bool drained_ = false;
};

}  // namespace moe::server

#endif  // MOE_SERVER_SERVER_H_
