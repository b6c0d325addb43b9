#include "tests/integration/server_fixture.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "proto/health.grpc.pb.h"
#include "server/validation.h"

namespace moe::testing {

TestServer::~TestServer() {
  if (server != nullptr) server->Drain(std::chrono::milliseconds(0));
}

std::unique_ptr<TestServer> StartServer(server::ServerOptions options,
                                        EngineOptions engine_options,
                                        std::shared_ptr<grpc::ChannelCredentials> credentials) {
  auto t = std::make_unique<TestServer>();
  options.host = "127.0.0.1";
  options.port = 0;
  options.service.max_seqs = engine_options.max_seqs;
  absl::StatusOr<std::unique_ptr<server::MoeServer>> server = server::MoeServer::Start(options);
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return nullptr;
  }
  t->server = std::move(*server);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(kTinyModel, engine_options);
  if (!engine.ok()) {
    ADD_FAILURE() << engine.status();
    return nullptr;
  }
  t->engine = std::move(*engine);
  t->server->SetEngine(t->engine.get());
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  if (credentials == nullptr) credentials = grpc::InsecureChannelCredentials();
  // The TLS tests' certificates name "localhost".
  args.SetSslTargetNameOverride("localhost");
  t->channel = grpc::CreateCustomChannel(t->address(), credentials, args);
  t->stub = v1::MoeService::NewStub(t->channel);
  return t;
}

StreamResult RunGenerate(v1::MoeService::Stub& stub, const v1::GenerateRequest& request,
                         grpc::ClientContext* context) {
  grpc::ClientContext own;
  if (context == nullptr) context = &own;
  StreamResult r;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++r.messages;
    r.tokens.insert(r.tokens.end(), response.tokens().begin(), response.tokens().end());
    r.logprobs.insert(r.logprobs.end(), response.logprobs().begin(), response.logprobs().end());
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      r.finish_reason = response.finish_reason();
      r.usage = response.usage();
    }
  }
  r.status = reader->Finish();
  return r;
}

v1::GenerateRequest GreedyRequest(std::vector<int32_t> prompt, int64_t max_new_tokens) {
  v1::GenerateRequest r;
  for (const int32_t t : prompt) r.add_prompt(t);
  r.set_max_new_tokens(max_new_tokens);
  r.set_ignore_eos(true);
  return r;
}

GenerationRequest ToEngine(const v1::GenerateRequest& request) {
  return server::ToGenerationRequest(request);
}

bool WaitFor(const std::function<bool()>& predicate, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return predicate();
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

int HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = health->Check(&context, request, &response);
  return s.ok() ? response.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
}

double MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return 0;
}

}  // namespace moe::testing
