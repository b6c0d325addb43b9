#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"

namespace moe::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, "=", path, " cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca needs --tls_cert and --tls_key (mutual TLS is on top of TLS)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPem("tls_cert", o.tls_cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadPem("tls_key", o.tls_key);
  if (!key.ok()) return key.status();
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.tls_client_ca.empty()) {
    auto ca = ReadPem("tls_client_ca", o.tls_client_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// "[::1]:50051" for IPv6 literals, "host:port" otherwise.
std::string Address(const std::string& host, int64_t port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

// Whether an IPv4 host:port can be bound now: a taken port then fails with one line naming it,
// before gRPC logs its own multi-line error. OK for other hosts (gRPC's bind decides).
absl::Status CheckPortFree(const std::string& host, int64_t port, const std::string& address) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (port == 0 || inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) return absl::OkStatus();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::OkStatus();
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  const int error = errno;
  close(fd);
  if (bound) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address, " (--host / --port): ", strerror(error)));
}

// --reflection=false: removes the reflection plugin that InitProtoReflectionServerBuilderPlugin
// registered for every builder of the process.
class NoReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    for (auto it = plugins->begin(); it != plugins->end();) {
      it = (*it)->name() == "proto_server_reflection" ? plugins->erase(it) : it + 1;
    }
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<MoeServer>> MoeServer::Start(const ServerOptions& options) {
  auto credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<MoeServer> s(new MoeServer());
  s->metrics_ = std::make_unique<ServerMetrics>();
  s->service_ = std::make_unique<MoeService>(options.service, s->metrics_.get());

  // Process-wide switches, read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.reflection) {
    builder.SetOption(std::make_unique<NoReflection>());
  }
  const std::string address = Address(options.host, options.port);
  if (auto free = CheckPortFree(options.host, options.port, address); !free.ok()) return free;
  // Two servers on one port would share its connections: refused instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, *credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address,
                                               " (--host / --port): in use or not bindable"));
  }
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(false);

  if (options.metrics_port >= 0) {
    ServerMetrics* metrics = s->metrics_.get();
    auto http = MetricsHttpServer::Start(options.host, static_cast<int>(options.metrics_port),
                                         [metrics] { return metrics->Text(); });
    if (!http.ok()) return http.status();
    s->metrics_http_ = std::move(*http);
  }
  return s;
}

MoeServer::~MoeServer() { Drain(std::chrono::milliseconds(0)); }

void MoeServer::SetEngine(Engine* engine) {
  metrics_->SetEngine(engine);
  service_->SetEngine(engine);
  server_->GetHealthCheckService()->SetServingStatus(true);
}

void MoeServer::Drain(std::chrono::milliseconds grace) {
  if (drained_ || server_ == nullptr) return;
  drained_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  const auto grace_end = std::chrono::steady_clock::now() + grace;
  service_->StartDrain(grace_end);
  // Running calls see the grace end themselves (within their poll interval) and cancel their
  // engine requests; this waits for them to be gone. Bounded: a call stuck in a Write to a
  // client that reads nothing is cancelled by Shutdown's deadline below.
  const auto wait_end = grace_end + std::chrono::seconds(2);
  while (service_->in_flight() > 0 && std::chrono::steady_clock::now() < wait_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  metrics_->SetEngine(nullptr);
}

}  // namespace moe::server
