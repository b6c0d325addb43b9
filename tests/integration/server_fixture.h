// A real moe_server (server/server.h) in the test's process on 127.0.0.1 with an ephemeral
// port, over a real moe::Engine on a shipped tiny model, and a real gRPC C++ client channel.
// In-process so that tests can set engine hooks (slow or failing steps) and read the engine's
// stats (KV blocks back to zero); the binary itself is tested in moe_server_test.
#ifndef MOE_TESTS_INTEGRATION_SERVER_FIXTURE_H_
#define MOE_TESTS_INTEGRATION_SERVER_FIXTURE_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/api/engine.h"
#include "grpcpp/grpcpp.h"
#include "proto/moe.grpc.pb.h"
#include "server/server.h"

namespace moe::testing {

inline constexpr char kTinyModel[] = "models/qwen3-moe-tiny";

struct TestServer {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<server::MoeServer> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::MoeService::Stub> stub;

  std::string address() const { return "127.0.0.1:" + std::to_string(server->port()); }
  ~TestServer();  // drains the server before the engine goes
};

// Starts a server (port 0) over an engine of kTinyModel with `engine_options`, and a client
// channel (insecure unless `credentials` is given). Fails the test (ADD_FAILURE) and returns
// null when anything does not start.
std::unique_ptr<TestServer> StartServer(
    server::ServerOptions options, EngineOptions engine_options = {},
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

// What a Generate stream gave: the tokens and logprobs of every message, the last message's
// finish reason and usage, the number of messages, and the call's status.
struct StreamResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  int messages = 0;
  grpc::Status status;
};
StreamResult RunGenerate(v1::MoeService::Stub& stub, const v1::GenerateRequest& request,
                         grpc::ClientContext* context = nullptr);

// A greedy request of `prompt` for `max_new_tokens`, eos ignored (fixed length).
v1::GenerateRequest GreedyRequest(std::vector<int32_t> prompt, int64_t max_new_tokens);
GenerationRequest ToEngine(const v1::GenerateRequest& request);

// Polls `predicate` every millisecond for up to `timeout`.
bool WaitFor(const std::function<bool()>& predicate,
             std::chrono::milliseconds timeout = std::chrono::seconds(10));

// The body of an HTTP GET of 127.0.0.1:port/path ("" when it fails).
std::string HttpGet(int port, const std::string& path);

// grpc.health.v1 Check of the whole server: the status, or UNKNOWN when the call fails.
int HealthCheck(const std::shared_ptr<grpc::Channel>& channel);

// The value of a metric line "name{labels} value" (or "name value") in Prometheus text, 0 if
// absent. `series` is the text before the value, e.g. moe_rejections_total{reason="queue_full"}.
double MetricValue(const std::string& text, const std::string& series);

}  // namespace moe::testing

#endif  // MOE_TESTS_INTEGRATION_SERVER_FIXTURE_H_
