// The HTTP side of moe_server's metrics: GET /metrics answers ServerMetrics::Text() (Prometheus
// text format 0.0.4); any other path 404. One thread, one request per connection
// (HTTP/1.0-style "Connection: close"), which is what a Prometheus scraper needs.
//
// Why not prometheus-cpp's own Exposer (civetweb): civetweb creates its threads with a fixed
// small stack, and in this binary glibc refuses them ("Cannot create threads"), because the
// CUDA libraries linked in (cublasLt) need ~94 KB of static TLS per thread.
#ifndef MOE_SERVER_METRICS_HTTP_H_
#define MOE_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace moe::server {

class MetricsHttpServer {
 public:
  // Listens on host:port (IPv4; port 0 = any free port). Unavailable naming the address when
  // it cannot be bound. `body` is called for every scrape, on the server's thread.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::function<std::string()> body);
  ~MetricsHttpServer();  // stops the thread and closes the socket
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::function<std::string()> body);
  void Run();
  void Answer(int client);

  const int fd_;
  const int port_;
  const std::function<std::string()> body_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace moe::server

#endif  // MOE_SERVER_METRICS_HTTP_H_
