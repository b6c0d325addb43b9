// moe_server's hard edges (issue 5), each with its limit set small: validation (1), message
// size (2), deadlines (3), client cancel (4), a full admission queue (5), draining (8, the
// in-process half; the binary's SIGTERM is in moe_server_test) and a failing engine step (10).
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "proto/health.grpc.pb.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {
namespace {

using std::chrono::milliseconds;

// Steps that take `step_ms`: long enough to see what happens between them.
EngineOptions SlowEngine(int step_ms, int64_t max_seqs = 4) {
  EngineOptions e;
  e.max_seqs = max_seqs;
  e.max_batch_tokens = 64;
  e.kv_cache_bytes = 4 << 20;
  e.threads = 1;
  e.step_hook = [step_ms] {
    std::this_thread::sleep_for(milliseconds(step_ms));
    return absl::OkStatus();
  };
  return e;
}

struct BadCase {
  const char* name;
  std::function<void(v1::GenerateRequest*)> edit;
  const char* message;
};

TEST(GrpcEdgesTest, InvalidRequestsNameFieldAndLimitAndNeverReachTheEngine) {
  server::ServerOptions o;
  o.service.max_batch_requests = 2;
  EngineOptions e;
  e.max_tokens_per_seq = 32;  // max_context
  e.threads = 1;
  auto t = StartServer(o, e);
  ASSERT_NE(t, nullptr);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<BadCase> cases = {
      {"token -1", [](auto* r) { r->set_prompt(1, -1); }, "prompt[1]=-1 is outside [0, vocab_size=256)"},
      {"token = vocab", [](auto* r) { r->set_prompt(0, 256); },
       "prompt[0]=256 is outside [0, vocab_size=256)"},
      {"empty prompt", [](auto* r) { r->clear_prompt(); }, "prompt is empty"},
      {"context + 1", [](auto* r) { r->set_max_new_tokens(30); },
       "prompt (3 tokens) + max_new_tokens (30) = 33 exceeds max_context=32"},
      {"max_new 0", [](auto* r) { r->set_max_new_tokens(0); }, "max_new_tokens=0 must be >= 1"},
      {"temperature < 0", [](auto* r) { r->mutable_sampling()->set_temperature(-0.5f); },
       "sampling.temperature=-0.5 must be finite and >= 0"},
      {"temperature NaN", [&](auto* r) { r->mutable_sampling()->set_temperature(nan); },
       "sampling.temperature=nan must be finite and >= 0"},
      {"temperature Inf", [&](auto* r) { r->mutable_sampling()->set_temperature(inf); },
       "sampling.temperature=inf must be finite and >= 0"},
      {"top_p 0", [](auto* r) { r->mutable_sampling()->set_top_p(0.0f); },
       "sampling.top_p=0 is outside (0, 1]"},
      {"top_p NaN", [&](auto* r) { r->mutable_sampling()->set_top_p(nan); },
       "sampling.top_p=nan is outside (0, 1]"},
      {"top_p > 1", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p=1.5 is outside (0, 1]"},
      {"top_k < 0", [](auto* r) { r->mutable_sampling()->set_top_k(-1); },
       "sampling.top_k=-1 must be >= 0"},
      {"min_p Inf", [&](auto* r) { r->mutable_sampling()->set_min_p(inf); },
       "sampling.min_p=inf is outside [0, 1]"},
      {"penalty -Inf", [&](auto* r) { r->mutable_sampling()->set_repetition_penalty(-inf); },
       "sampling.repetition_penalty=-inf must be finite and > 0"},
      {"stop id = vocab", [](auto* r) { r->add_stop_token_ids(256); },
       "stop_token_ids[0]=256 is outside [0, vocab_size=256)"},
  };
  for (const BadCase& c : cases) {
    v1::GenerateRequest r = GreedyRequest({1, 2, 3}, 4);
    c.edit(&r);
    StreamResult got = RunGenerate(*t->stub, r);
    EXPECT_EQ(got.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_EQ(got.status.error_message(), c.message) << c.name;
    EXPECT_EQ(got.messages, 0) << c.name;
  }
  // Batch over the limit, and a bad entry inside a batch.
  v1::GenerateBatchRequest batch;
  for (int i = 0; i < 3; ++i) *batch.add_requests() = GreedyRequest({1}, 1);
  {
    grpc::ClientContext context;
    v1::GenerateBatchResponse response;
    grpc::Status s = t->stub->GenerateBatch(&context, batch, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message(), "requests has 3 entries, over max_batch_requests=2");
  }
  batch.mutable_requests()->RemoveLast();
  batch.mutable_requests(1)->set_prompt(0, -1);
  {
    grpc::ClientContext context;
    v1::GenerateBatchResponse response;
    grpc::Status s = t->stub->GenerateBatch(&context, batch, &response);
    EXPECT_EQ(s.error_message(), "requests[1].prompt[0]=-1 is outside [0, vocab_size=256)");
  }
  // Nothing reached the engine; the metric counts every refusal.
  EXPECT_EQ(t->engine->Stats().steps, 0);
  EXPECT_EQ(t->engine->Stats().prompt_tokens, 0);
  const std::string metrics = t->server->metrics().Text();
  EXPECT_EQ(MetricValue(metrics, "moe_rejections_total{reason=\"invalid_argument\"}"),
            cases.size() + 2);

  // The exact limit is accepted: prompt + max_new_tokens = max_context.
  StreamResult at_limit = RunGenerate(*t->stub, GreedyRequest({1, 2, 3}, 29));
  EXPECT_TRUE(at_limit.status.ok()) << at_limit.status.error_message();
  EXPECT_EQ(at_limit.tokens.size(), 29u);
}

TEST(GrpcEdgesTest, MessageOverTheSizeLimitIsRefusedAtTheLimitAccepted) {
  v1::GenerateRequest at = GreedyRequest(std::vector<int32_t>(40, 7), 2);
  const int64_t limit = static_cast<int64_t>(at.ByteSizeLong());
  v1::GenerateRequest over = at;
  over.add_prompt(7);
  ASSERT_GT(static_cast<int64_t>(over.ByteSizeLong()), limit);
  server::ServerOptions o;
  o.max_message_bytes = limit;
  EngineOptions e;
  e.threads = 1;
  auto t = StartServer(o, e);
  ASSERT_NE(t, nullptr);
  StreamResult ok = RunGenerate(*t->stub, at);
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  StreamResult refused = RunGenerate(*t->stub, over);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(refused.status.error_message(),
                                absl::StrCat(over.ByteSizeLong(), " vs. ", limit)))
      << refused.status.error_message();
  EXPECT_EQ(t->engine->Stats().prompt_tokens, 40);
}

TEST(GrpcEdgesTest, DeadlineEndsARunningStreamAndFreesItsBlocksWithinTwoSteps) {
  auto t = StartServer({}, SlowEngine(20));
  ASSERT_NE(t, nullptr);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + milliseconds(200));
  StreamResult got = RunGenerate(*t->stub, GreedyRequest({1, 2, 3}, 200), &context);
  const int64_t steps_at_end = t->engine->Stats().steps;
  EXPECT_EQ(got.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(got.tokens.size(), 0u);
  EXPECT_LT(got.tokens.size(), 200u);
  ASSERT_TRUE(WaitFor([&] {
    const EngineStats s = t->engine->Stats();
    return s.kv_blocks_used == 0 && s.running == 0;
  }));
  EXPECT_LE(t->engine->Stats().steps - steps_at_end, 2);
  EXPECT_TRUE(WaitFor([&] { return t->server->service().in_flight() == 0; }));
}

TEST(GrpcEdgesTest, RequestWhoseDeadlinePassesWhileQueuedNeverRuns) {
  auto t = StartServer({}, SlowEngine(10, /*max_seqs=*/1));
  ASSERT_NE(t, nullptr);
  StreamResult first;
  std::thread runner([&] { first = RunGenerate(*t->stub, GreedyRequest({1, 2, 3}, 30)); });
  ASSERT_TRUE(WaitFor([&] { return t->engine->Stats().running == 1; }));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + milliseconds(100));
  StreamResult queued = RunGenerate(*t->stub, GreedyRequest({9, 9, 9, 9, 9}, 4), &context);
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(queued.tokens.empty());
  runner.join();
  EXPECT_TRUE(first.status.ok());
  // Only the first request's 3 prompt tokens were ever computed.
  EXPECT_EQ(t->engine->Stats().prompt_tokens, 3);
  EXPECT_EQ(t->engine->Stats().generated_tokens, 30);
}

TEST(GrpcEdgesTest, CancelledStreamStopsWithinOneStepAndFreesItsBlocks) {
  auto t = StartServer({}, SlowEngine(20));
  ASSERT_NE(t, nullptr);
  grpc::ClientContext context;
  auto reader = t->stub->Generate(&context, GreedyRequest({1, 2, 3}, 200));
  v1::GenerateResponse response;
  int tokens = 0;
  while (tokens < 3 && reader->Read(&response)) tokens += response.tokens_size();
  context.TryCancel();
  const int64_t generated_at_cancel = t->engine->Stats().generated_tokens;
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitFor([&] {
    const EngineStats s = t->engine->Stats();
    return s.kv_blocks_used == 0 && s.running == 0;
  }));
  // At most the step running when the cancel came.
  EXPECT_LE(t->engine->Stats().generated_tokens - generated_at_cancel, 1);
  EXPECT_TRUE(WaitFor([&] {
    return MetricValue(t->server->metrics().Text(),
                       "moe_requests_total{method=\"Generate\",outcome=\"cancelled\"}") == 1;
  }));
}

TEST(GrpcEdgesTest, FullQueueRejectsExactlyTheExcessAtOnceAndTheRestComplete) {
  server::ServerOptions o;
  o.service.max_queue = 2;  // capacity: max_seqs 1 + 2
  auto t = StartServer(o, SlowEngine(10, /*max_seqs=*/1));
  ASSERT_NE(t, nullptr);
  std::vector<StreamResult> admitted(3);
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back(
        [&, i] { admitted[i] = RunGenerate(*t->stub, GreedyRequest({1, 2, i}, 10)); });
  }
  ASSERT_TRUE(WaitFor([&] { return t->server->service().in_flight() == 3; }));
  for (int i = 0; i < 4; ++i) {
    const auto start = std::chrono::steady_clock::now();
    StreamResult excess = RunGenerate(*t->stub, GreedyRequest({5}, 2));
    EXPECT_EQ(excess.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_EQ(excess.status.error_message(),
              "admission queue is full: 3 requests in flight, 1 more would exceed max_seqs + "
              "max_queue = 3; retry with backoff");
    // At once: well before even one of the admitted requests (10 steps of 10 ms) finishes.
    EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(90));
  }
  for (std::thread& c : clients) c.join();
  for (const StreamResult& r : admitted) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens.size(), 10u);
  }
  EXPECT_EQ(MetricValue(t->server->metrics().Text(), "moe_rejections_total{reason=\"queue_full\"}"),
            4);
}

TEST(GrpcEdgesTest, DrainFlipsHealthRefusesNewCallsAndLetsRunningStreamsFinish) {
  auto t = StartServer({}, SlowEngine(10));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(HealthCheck(t->channel), grpc::health::v1::HealthCheckResponse::SERVING);
  StreamResult running;
  std::thread client([&] { running = RunGenerate(*t->stub, GreedyRequest({1, 2}, 20)); });
  ASSERT_TRUE(WaitFor([&] { return t->engine->Stats().running == 1; }));
  std::thread drain([&] { t->server->Drain(std::chrono::seconds(5)); });
  EXPECT_TRUE(WaitFor([&] {
    return HealthCheck(t->channel) == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  }));
  StreamResult refused = RunGenerate(*t->stub, GreedyRequest({3}, 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused.status.error_message(), "the server is shutting down");
  client.join();
  drain.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.tokens.size(), 20u);
}

TEST(GrpcEdgesTest, StreamsStillRunningWhenTheGracePeriodEndsNameTheShutdown) {
  auto t = StartServer({}, SlowEngine(10));
  ASSERT_NE(t, nullptr);
  StreamResult running;
  std::thread client([&] { running = RunGenerate(*t->stub, GreedyRequest({1, 2}, 200)); });
  ASSERT_TRUE(WaitFor([&] { return t->engine->Stats().running == 1; }));
  t->server->Drain(milliseconds(50));
  client.join();
  EXPECT_EQ(running.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(running.status.error_message(), "shutting down"));
  EXPECT_TRUE(WaitFor([&] { return t->engine->Stats().kv_blocks_used == 0; }));
}

TEST(GrpcEdgesTest, FailedStepEndsItsRequestsWithInternalAndTheServerRecovers) {
  std::atomic<bool> fail{false};
  EngineOptions e = SlowEngine(5);
  e.step_hook = [&fail] {
    std::this_thread::sleep_for(milliseconds(5));
    return fail.load() ? absl::InternalError("injected step failure (test hook)")
                       : absl::OkStatus();
  };
  auto t = StartServer({}, e);
  ASSERT_NE(t, nullptr);
  grpc::ClientContext context;
  auto reader = t->stub->Generate(&context, GreedyRequest({1, 2, 3}, 100));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  fail.store(true);
  while (reader->Read(&response)) {
  }
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "step failed: injected step failure"))
      << status.error_message();
  fail.store(false);
  EXPECT_EQ(t->engine->Stats().kv_blocks_used, 0);
  EXPECT_EQ(HealthCheck(t->channel), grpc::health::v1::HealthCheckResponse::SERVING);
  StreamResult after = RunGenerate(*t->stub, GreedyRequest({1, 2, 3}, 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens.size(), 4u);
}

}  // namespace
}  // namespace moe::testing
