// moe_server's API end to end: a real server on 127.0.0.1 (ephemeral port) and a real gRPC
// client. Greedy results over gRPC are bit-identical to the same request run alone through the
// engine; streams end with finish reason and usage; GenerateBatch keeps input order;
// GetModelInfo reports the model and limits; the metrics endpoint answers.
#include <cstring>
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {
namespace {

server::ServerOptions SmallOptions() {
  server::ServerOptions o;
  o.service.max_queue = 64;
  o.metrics_port = 0;
  return o;
}

EngineOptions SmallEngine() {
  EngineOptions e;
  e.max_seqs = 8;
  e.max_batch_tokens = 64;
  e.kv_cache_bytes = 8 << 20;
  e.threads = 1;
  return e;
}

TEST(GrpcGenerateTest, GreedyStreamIsBitIdenticalToTheEngineAlone) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  v1::GenerateRequest request = GreedyRequest({5, 17, 99, 3, 250}, 12);
  request.set_return_logprobs(true);
  StreamResult got = RunGenerate(*t->stub, request);
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.finish_reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(got.usage.prompt_tokens(), 5);
  EXPECT_EQ(got.usage.completion_tokens(), 12);

  auto alone = t->engine->Generate({ToEngine(request)});
  ASSERT_TRUE(alone[0].ok()) << alone[0].status();
  EXPECT_EQ(got.tokens, alone[0]->tokens);
  ASSERT_EQ(got.logprobs.size(), alone[0]->logprobs.size());
  EXPECT_EQ(0, std::memcmp(got.logprobs.data(), alone[0]->logprobs.data(),
                           got.logprobs.size() * sizeof(float)));
}

TEST(GrpcGenerateTest, ConcurrentStreamsEachGiveTheirAloneTokens) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  constexpr int kClients = 12;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kClients; ++i) {
    std::vector<int32_t> prompt;
    for (int j = 0; j < 1 + 2 * i; ++j) prompt.push_back((i * 37 + j * 11) % 256);  // odd lengths
    requests.push_back(GreedyRequest(prompt, 3 + i % 5));
  }
  std::vector<StreamResult> got(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] { got[i] = RunGenerate(*t->stub, requests[i]); });
  }
  for (std::thread& c : clients) c.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].status.error_message();
    auto alone = t->engine->Generate({ToEngine(requests[i])});
    ASSERT_TRUE(alone[0].ok());
    EXPECT_EQ(got[i].tokens, alone[0]->tokens) << "client " << i;
  }
}

TEST(GrpcGenerateTest, StopTokenEndsTheStreamWithStop) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  v1::GenerateRequest request = GreedyRequest({1, 2, 3}, 8);
  StreamResult free_run = RunGenerate(*t->stub, request);
  ASSERT_TRUE(free_run.status.ok());
  ASSERT_GE(free_run.tokens.size(), 3u);
  request.add_stop_token_ids(free_run.tokens[2]);
  StreamResult stopped = RunGenerate(*t->stub, request);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.finish_reason, v1::FINISH_REASON_STOP);
  ASSERT_LE(stopped.tokens.size(), 3u);
  EXPECT_EQ(stopped.tokens.back(), free_run.tokens[2]);
  EXPECT_EQ(stopped.usage.completion_tokens(), static_cast<int64_t>(stopped.tokens.size()));
}

TEST(GrpcGenerateTest, GenerateBatchReturnsResultsInInputOrder) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  v1::GenerateBatchRequest batch;
  std::vector<GenerationRequest> engine_requests;
  for (int i = 0; i < 5; ++i) {
    v1::GenerateRequest r = GreedyRequest({static_cast<int32_t>(10 * i + 1), 7}, 2 + i);
    r.set_return_logprobs(i % 2 == 0);
    *batch.add_requests() = r;
    engine_requests.push_back(ToEngine(r));
  }
  grpc::ClientContext context;
  v1::GenerateBatchResponse response;
  grpc::Status status = t->stub->GenerateBatch(&context, batch, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  auto alone = t->engine->Generate(engine_requests);
  ASSERT_EQ(response.results_size(), 5);
  for (int i = 0; i < 5; ++i) {
    const v1::GenerateResult& r = response.results(i);
    ASSERT_TRUE(alone[i].ok());
    EXPECT_EQ(std::vector<int32_t>(r.tokens().begin(), r.tokens().end()), alone[i]->tokens);
    EXPECT_EQ(r.tokens_size(), 2 + i);
    EXPECT_EQ(r.logprobs_size(), i % 2 == 0 ? 2 + i : 0);
    EXPECT_EQ(r.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(r.usage().prompt_tokens(), 2);
    EXPECT_EQ(r.usage().completion_tokens(), 2 + i);
  }
}

TEST(GrpcGenerateTest, GetModelInfoReportsModelAndLimits) {
  server::ServerOptions o = SmallOptions();
  o.service.max_queue = 5;
  o.service.max_batch_requests = 7;
  o.max_message_bytes = 12345;
  o.service.max_message_bytes = 12345;
  EngineOptions e = SmallEngine();
  e.max_tokens_per_seq = 100;
  auto t = StartServer(o, e);
  ASSERT_NE(t, nullptr);
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(t->stub->GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.family(), "qwen3_moe");
  EXPECT_EQ(info.vocab_size(), 256);
  EXPECT_EQ(info.hidden_size(), 64);
  EXPECT_EQ(info.num_layers(), 3);
  EXPECT_EQ(info.num_experts(), 8);
  EXPECT_EQ(info.experts_per_token(), 4);
  EXPECT_EQ(info.dtype(), "f32");
  EXPECT_EQ(info.backend(), "cpu");
  ASSERT_EQ(info.devices_size(), 1);
  EXPECT_EQ(info.devices(0), "cpu");
  EXPECT_EQ(info.max_context(), 100);
  EXPECT_EQ(info.max_batch_tokens(), 64);
  EXPECT_EQ(info.max_seqs(), 8);
  EXPECT_EQ(info.max_queue(), 5);
  EXPECT_EQ(info.max_batch_requests(), 7);
  EXPECT_EQ(info.max_message_bytes(), 12345);
  EXPECT_GT(info.kv_cache_blocks(), 0);
  EXPECT_EQ(info.block_size(), 16);
  EXPECT_GT(info.weight_bytes(), 0);
}

TEST(GrpcGenerateTest, MetricsEndpointServesCountersAndEngineGauges) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(RunGenerate(*t->stub, GreedyRequest({4, 5, 6}, 5)).status.ok());
  const std::string text = HttpGet(t->server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(text, "moe_requests_total{method=\"Generate\",outcome=\"ok\"}"), 1)
      << text;
  EXPECT_EQ(MetricValue(text, "moe_prefill_tokens_total"), 3);
  EXPECT_EQ(MetricValue(text, "moe_decode_tokens_total"), 5);
  EXPECT_EQ(MetricValue(text, "moe_kv_blocks_used"), 0);
  EXPECT_EQ(MetricValue(text, "moe_kv_blocks_free"),
            static_cast<double>(t->engine->model_info().kv_cache_blocks));
  EXPECT_EQ(MetricValue(text, "moe_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(MetricValue(text, "moe_inter_token_latency_seconds_count"), 4);
  EXPECT_EQ(MetricValue(text, "moe_running_requests"), 0);
  EXPECT_EQ(MetricValue(text, "moe_queue_depth"), 0);
  // Not asked for (EngineOptions::count_expert_tokens): no series.
  EXPECT_EQ(text.find("moe_expert_tokens_total{"), std::string::npos);
}

// Every row the MoE blocks routed, per layer and expert: a Generate of 3 + 5 tokens runs 3
// prefill rows and 4 decode rows, a Forward of 4 tokens 4 rows; each row goes to top_k=4
// experts. Layer 0 of the tiny model is dense (mlp_only_layers): no counts, no series.
TEST(GrpcGenerateTest, ExpertTokenMetricCountsEveryRoutedRow) {
  EngineOptions e = SmallEngine();
  e.count_expert_tokens = true;
  auto t = StartServer(SmallOptions(), e);
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(RunGenerate(*t->stub, GreedyRequest({4, 5, 6}, 5)).status.ok());
  v1::ForwardRequest forward;
  forward.set_output(v1::FORWARD_OUTPUT_LOGITS);
  v1::TokenSequence* sequence = forward.add_sequences();
  for (const int32_t token : {9, 8, 7, 6}) sequence->add_tokens(token);
  grpc::ClientContext context;
  v1::ForwardResponse response;
  ASSERT_TRUE(t->stub->Forward(&context, forward, &response).ok());

  const std::string text = HttpGet(t->server->metrics_port(), "/metrics");
  const EngineStats stats = t->engine->Stats();
  ASSERT_EQ(stats.expert_tokens.size(), 3u);
  EXPECT_TRUE(stats.expert_tokens[0].empty());
  EXPECT_EQ(text.find("layer=\"0\""), std::string::npos);
  for (int layer = 1; layer < 3; ++layer) {
    ASSERT_EQ(stats.expert_tokens[layer].size(), 8u);
    double sum = 0;
    for (int expert = 0; expert < 8; ++expert) {
      const double value = MetricValue(
          text, "moe_expert_tokens_total{expert=\"" + std::to_string(expert) + "\",layer=\"" +
                    std::to_string(layer) + "\"}");
      EXPECT_EQ(value, stats.expert_tokens[layer][expert]) << layer << "/" << expert;
      sum += value;
    }
    EXPECT_EQ(sum, (3 + 4 + 4) * 4) << "layer " << layer << "\n" << text;
  }
}

TEST(GrpcGenerateTest, ForwardGivesTheEngineAloneResultsPerSequence) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  // 70 tokens: two prefill chunks of max_batch_tokens=64.
  std::vector<int32_t> long_seq;
  for (int i = 0; i < 70; ++i) long_seq.push_back((i * 13 + 5) % 256);
  const std::vector<std::vector<int32_t>> sequences = {{5, 17, 99}, {1}, long_seq};
  const auto call = [&](v1::ForwardOutput output, int top_n) {
    v1::ForwardRequest request;
    for (const auto& s : sequences) {
      v1::TokenSequence* seq = request.add_sequences();
      seq->mutable_tokens()->Add(s.begin(), s.end());
    }
    request.set_output(output);
    request.set_top_n(top_n);
    grpc::ClientContext context;
    v1::ForwardResponse response;
    grpc::Status status = t->stub->Forward(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  const v1::ForwardResponse logits = call(v1::FORWARD_OUTPUT_LOGITS, 0);
  const v1::ForwardResponse hidden = call(v1::FORWARD_OUTPUT_HIDDEN_STATE, 0);
  const v1::ForwardResponse top = call(v1::FORWARD_OUTPUT_TOP_LOGPROBS, 3);
  ASSERT_EQ(logits.results_size(), 3);
  ASSERT_EQ(hidden.results_size(), 3);
  ASSERT_EQ(top.results_size(), 3);
  ForwardRequest alone;
  alone.output = ForwardOutput::kLogits;
  for (int i = 0; i < 3; ++i) {
    alone.sequences = {sequences[i]};
    auto direct = t->engine->Forward(alone);
    ASSERT_TRUE(direct.ok()) << direct.status();
    const auto& got = logits.results(i).values();
    ASSERT_EQ(got.size(), 256);
    EXPECT_EQ(0, std::memcmp(got.data(), (*direct)[0].values.data(), 256 * sizeof(float)))
        << "sequence " << i;
    EXPECT_EQ(hidden.results(i).values_size(), 64);
    // The top id is the greedy next token, and the top-3 are sorted.
    ASSERT_EQ(top.results(i).top_ids_size(), 3);
    auto next = t->engine->Generate({ToEngine(GreedyRequest(sequences[i], 1))});
    ASSERT_TRUE(next[0].ok());
    EXPECT_EQ(top.results(i).top_ids(0), next[0]->tokens[0]);
    EXPECT_GE(top.results(i).top_logprobs(0), top.results(i).top_logprobs(1));
    EXPECT_GE(top.results(i).top_logprobs(1), top.results(i).top_logprobs(2));
    EXPECT_LE(top.results(i).top_logprobs(0), 0.0f);
  }
  // Nothing stays in the KV cache.
  EXPECT_EQ(t->engine->Stats().kv_blocks_used, 0);
}

TEST(GrpcGenerateTest, ForwardValidationNamesTheField) {
  auto t = StartServer(SmallOptions(), SmallEngine());
  ASSERT_NE(t, nullptr);
  const auto status_of = [&](const v1::ForwardRequest& r) {
    grpc::ClientContext context;
    v1::ForwardResponse response;
    return t->stub->Forward(&context, r, &response);
  };
  v1::ForwardRequest r;
  r.add_sequences()->add_tokens(256);
  r.set_output(v1::FORWARD_OUTPUT_LOGITS);
  EXPECT_EQ(status_of(r).error_message(), "sequences[0].tokens[0]=256 is outside [0, vocab_size=256)");
  r.mutable_sequences(0)->set_tokens(0, 1);
  r.set_output(v1::FORWARD_OUTPUT_TOP_LOGPROBS);
  r.set_top_n(257);
  EXPECT_EQ(status_of(r).error_message(), "top_n=257 is outside [1, vocab_size=256]");
  r.set_output(v1::FORWARD_OUTPUT_UNSPECIFIED);
  EXPECT_EQ(status_of(r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  r.set_output(v1::FORWARD_OUTPUT_LOGITS);
  r.add_sequences();
  EXPECT_EQ(status_of(r).error_message(), "sequences[1].tokens is empty");
}

}  // namespace
}  // namespace moe::testing
