// moe::Engine end to end on the shipped tiny checkpoints: greedy generation equals
// transformers' (alone and batched), determinism (run twice, alone vs in a batch, sampled
// too), streaming callbacks, cancellation, stop tokens, the KV budget (waiting and rejection),
// bad requests and bad options.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "engine/api/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/golden.h"

namespace moe {
namespace {

using ::moe::testing::Golden;
using ::moe::testing::LoadGolden;

constexpr char kModel[] = "mixtral-tiny";

// The backend MOE_TEST_BACKEND names ("cpu" when unset): MOE_TEST_BACKEND=cuda runs the suite
// on a GPU.
std::string TestBackendName() {
  const char* env = std::getenv("MOE_TEST_BACKEND");
  return env != nullptr && *env != '\0' ? env : "cpu";
}

std::unique_ptr<Engine> MakeEngine(const std::string& model, EngineOptions options = {}) {
  if (options.dtype == "auto") options.dtype = "f32";
  options.backend = TestBackendName();
  auto engine = Engine::Create("models/" + model, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

GenerationRequest Greedy(const std::vector<int32_t>& prompt, int64_t n) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_new_tokens = n;
  r.ignore_eos = true;  // the goldens ran without eos
  return r;
}

GenerationRequest Sampled(const std::vector<int32_t>& prompt, int64_t n, uint64_t seed) {
  GenerationRequest r = Greedy(prompt, n);
  r.sampling.temperature = 0.9f;
  r.sampling.top_k = 40;
  r.sampling.top_p = 0.95f;
  r.sampling.repetition_penalty = 1.1f;
  r.sampling.seed = seed;
  r.return_logprobs = true;
  return r;
}

std::vector<GenerationResult> Unwrap(std::vector<absl::StatusOr<GenerationResult>> in) {
  std::vector<GenerationResult> out;
  for (auto& r : in) {
    EXPECT_TRUE(r.ok()) << r.status();
    out.push_back(r.ok() ? *r : GenerationResult{});
  }
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class EngineGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineGoldenTest, GreedyAloneAndBatchedEqualTransformers) {
  auto golden = LoadGolden(GetParam());
  ASSERT_TRUE(golden.ok()) << golden.status();
  auto engine = MakeEngine(GetParam());
  ASSERT_NE(engine, nullptr);
  for (size_t i = 0; i < golden->prompts.size(); ++i) {
    auto alone = Unwrap(engine->Generate({Greedy(golden->prompts[i], golden->max_new_tokens)}));
    EXPECT_EQ(alone[0].tokens, golden->greedy_fp32[i]) << "prompt " << i;
    EXPECT_EQ(alone[0].finish_reason, FinishReason::kLength);
    EXPECT_EQ(alone[0].prompt_tokens, static_cast<int64_t>(golden->prompts[i].size()));
  }
  std::vector<GenerationRequest> batch;
  for (const auto& p : golden->prompts) batch.push_back(Greedy(p, golden->max_new_tokens));
  auto results = Unwrap(engine->Generate(batch));
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].tokens, golden->batch_fp32[i]) << "prompt " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, EngineGoldenTest,
                         ::testing::Values("mixtral-tiny", "qwen3-moe-tiny", "qwen2-moe-tiny",
                                           "deepseek-v3-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

// The same requests give the same tokens and log-prob bits run after run, alone or among
// others, whatever the step composition (small max_batch_tokens forces chunked prefill).
TEST(EngineTest, DeterministicAloneBatchedAndRepeated) {
  auto golden = LoadGolden(kModel);
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t> prompt = golden->prompts[2];
  std::vector<GenerationRequest> mix;
  for (uint64_t s = 0; s < 6; ++s) {
    std::vector<int32_t> p = golden->prompts[s % 3];
    p.push_back(static_cast<int32_t>(17 * s + 3));
    mix.push_back(s % 2 == 0 ? Sampled(p, 5 + s, 100 + s) : Greedy(p, 7));
  }
  const GenerationRequest target = Sampled(prompt, 12, 7);
  std::vector<GenerationRequest> with_target = mix;
  with_target.insert(with_target.begin() + 3, target);

  EngineOptions small_steps;
  small_steps.max_batch_tokens = 7;
  std::vector<GenerationResult> runs;
  for (const EngineOptions& options : {EngineOptions{}, small_steps}) {
    auto engine = MakeEngine(kModel, options);
    ASSERT_NE(engine, nullptr);
    // The same Generate call twice: the same steps, so the same bits.
    const GenerationResult alone = Unwrap(engine->Generate({target}))[0];
    const GenerationResult alone_again = Unwrap(engine->Generate({target}))[0];
    EXPECT_EQ(alone_again.tokens, alone.tokens);
    EXPECT_TRUE(SameBits(alone_again.logprobs, alone.logprobs));
    const GenerationResult batched = Unwrap(engine->Generate(with_target))[3];
    const GenerationResult batched_again = Unwrap(engine->Generate(with_target))[3];
    EXPECT_EQ(batched_again.tokens, batched.tokens);
    EXPECT_TRUE(SameBits(batched_again.logprobs, batched.logprobs));
    runs.push_back(alone);
    runs.push_back(batched);
  }
  // Alone or batched, big or small steps: the same tokens.
  ASSERT_EQ(runs[0].tokens.size(), 12u);
  for (size_t i = 1; i < runs.size(); ++i) EXPECT_EQ(runs[i].tokens, runs[0].tokens) << i;
  // Another seed samples something else.
  auto engine = MakeEngine(kModel);
  GenerationRequest other = target;
  other.sampling.seed = 8;
  EXPECT_NE(Unwrap(engine->Generate({other}))[0].tokens, runs[0].tokens);
}

// One thread or two: the same bits (no kernel's arithmetic depends on the thread count).
TEST(EngineTest, SameBitsWithOneAndTwoThreads) {
  auto golden = LoadGolden("qwen3-moe-tiny");
  ASSERT_TRUE(golden.ok()) << golden.status();
  std::vector<GenerationRequest> requests;
  for (uint64_t i = 0; i < golden->prompts.size(); ++i) {
    requests.push_back(Sampled(golden->prompts[i], 10, 40 + i));
  }
  std::vector<std::vector<GenerationResult>> runs;
  for (int threads : {1, 2}) {
    for (const char* dtype : {"f32", "bf16"}) {
      EngineOptions options;
      options.threads = threads;
      options.dtype = dtype;
      auto engine = MakeEngine("qwen3-moe-tiny", options);
      ASSERT_NE(engine, nullptr);
      runs.push_back(Unwrap(engine->Generate(requests)));
    }
  }
  for (size_t dtype = 0; dtype < 2; ++dtype) {
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(runs[dtype][i].tokens, runs[2 + dtype][i].tokens) << dtype << " " << i;
      EXPECT_TRUE(SameBits(runs[dtype][i].logprobs, runs[2 + dtype][i].logprobs)) << dtype;
    }
  }
}

TEST(EngineTest, StreamsTokensInOrderThenFinishes) {
  auto golden = LoadGolden(kModel);
  ASSERT_TRUE(golden.ok()) << golden.status();
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  std::vector<TokenEvent> events;  // only the worker thread appends
  auto id = engine->Submit(Greedy(golden->prompts[0], golden->max_new_tokens),
                           [&](const TokenEvent& e) { events.push_back(e); });
  ASSERT_TRUE(id.ok()) << id.status();
  auto result = engine->Await(*id);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(events.size(), golden->greedy_fp32[0].size());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].request_id, *id);
    EXPECT_EQ(events[i].index, static_cast<int64_t>(i));
    EXPECT_EQ(events[i].token, golden->greedy_fp32[0][i]);
    EXPECT_EQ(events[i].finished, i + 1 == events.size());
  }
  EXPECT_EQ(events.back().finish_reason, FinishReason::kLength);
  EXPECT_EQ(result->tokens, golden->greedy_fp32[0]);
  EXPECT_EQ(engine->Await(*id).status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, StopTokenEndsGenerationAndIsIncluded) {
  auto golden = LoadGolden(kModel);
  ASSERT_TRUE(golden.ok()) << golden.status();
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t>& want = golden->greedy_fp32[1];
  GenerationRequest r = Greedy(golden->prompts[1], golden->max_new_tokens);
  r.stop_token_ids = {want[3]};
  auto result = Unwrap(engine->Generate({r}))[0];
  const size_t first = std::find(want.begin(), want.end(), want[3]) - want.begin();
  EXPECT_EQ(result.tokens, std::vector<int32_t>(want.begin(), want.begin() + first + 1));
  EXPECT_EQ(result.finish_reason, FinishReason::kStop);
}

// A copy of the model folder whose generation_config.json names `eos` (a list, as some
// checkpoints write it); the weights are symlinked.
std::string ModelWithEos(const std::string& model, int32_t eos) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + model + "-eos";
  const std::string src = std::filesystem::absolute("models/" + model).string();
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::remove(dir + "/model.safetensors");
  std::filesystem::create_symlink(src + "/model.safetensors", dir + "/model.safetensors");
  std::ofstream(dir + "/generation_config.json") << "{\"eos_token_id\": [" << eos << "]}\n";
  return dir;
}

TEST(EngineTest, EosFromGenerationConfigStopsUnlessIgnored) {
  auto golden = LoadGolden(kModel);
  ASSERT_TRUE(golden.ok()) << golden.status();
  const std::vector<int32_t>& want = golden->greedy_fp32[1];
  const int32_t eos = want[3];
  const size_t first = std::find(want.begin(), want.end(), eos) - want.begin();
  auto engine = Engine::Create(ModelWithEos(kModel, eos), {.dtype = "f32"});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->model_info().eos_token_ids, std::vector<int32_t>{eos});

  GenerationRequest r = Greedy(golden->prompts[1], golden->max_new_tokens);
  r.ignore_eos = false;
  auto stopped = Unwrap((*engine)->Generate({r}))[0];
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(want.begin(), want.begin() + first + 1));
  EXPECT_EQ(stopped.finish_reason, FinishReason::kStop);
  r.ignore_eos = true;
  auto full = Unwrap((*engine)->Generate({r}))[0];
  EXPECT_EQ(full.tokens, want);
  EXPECT_EQ(full.finish_reason, FinishReason::kLength);
}

TEST(EngineTest, CancelEndsARunningRequestAndKeepsItsTokens) {
  EngineOptions options;
  auto engine = MakeEngine(kModel, options);
  ASSERT_NE(engine, nullptr);
  std::atomic<int> seen{0};
  RequestId id = 0;
  auto submitted = engine->Submit(Greedy({1, 2, 3, 4}, 200), [&](const TokenEvent& e) {
    if (++seen == 3) {
      EXPECT_TRUE(engine->Cancel(e.request_id).ok());
    }
  });
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  id = *submitted;
  auto result = engine->Await(id);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->finish_reason, FinishReason::kCancelled);
  EXPECT_GE(result->tokens.size(), 3u);
  EXPECT_LT(result->tokens.size(), 200u);
  EXPECT_EQ(engine->Cancel(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

// A KV budget of a few blocks: requests that fit only one at a time all complete (they wait),
// with the same tokens as with a large budget; one that can never fit is rejected.
TEST(EngineTest, KvBudgetIsHonouredRequestsWaitOrAreRejected) {
  auto golden = LoadGolden(kModel);
  ASSERT_TRUE(golden.ok()) << golden.status();
  auto big = MakeEngine(kModel);
  ASSERT_NE(big, nullptr);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 5; ++i) requests.push_back(Greedy(golden->prompts[i % 3], 8));
  auto want = Unwrap(big->Generate(requests));

  // Room for one request of 13 + 8 tokens: 6 blocks of 4.
  EngineOptions tight;
  tight.block_size = 4;
  auto probe = MakeEngine(kModel, tight);
  ASSERT_NE(probe, nullptr);
  const int64_t bytes_per_block =
      EngineOptions{}.kv_cache_bytes / probe->model_info().kv_cache_blocks;
  tight.kv_cache_bytes = 6 * bytes_per_block + bytes_per_block / 2;
  auto engine = MakeEngine(kModel, tight);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->model_info().kv_cache_blocks, 6);

  std::atomic<int64_t> max_used{0};
  std::vector<absl::StatusOr<RequestId>> ids;
  for (const auto& r : requests) {
    ids.push_back(engine->Submit(r, [&](const TokenEvent&) {
      const int64_t used = engine->Stats().kv_blocks_used;
      if (used > max_used) max_used = used;
    }));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(ids[i].ok()) << ids[i].status();
    auto got = engine->Await(*ids[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, want[i].tokens) << "request " << i;
  }
  EXPECT_LE(max_used.load(), 6);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);

  auto never = engine->Submit(Greedy(std::vector<int32_t>(20, 3), 8));
  ASSERT_FALSE(never.ok());
  EXPECT_EQ(never.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(never.status().message(), "can never fit")) << never.status();
}

TEST(EngineTest, BadRequestsAreRejectedNamingTheFieldOthersRun) {
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->model_info().vocab_size;
  struct Case {
    GenerationRequest request;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({Greedy({}, 4), "prompt is empty"});
  cases.push_back({Greedy({1, static_cast<int32_t>(vocab)}, 4), "prompt[1]"});
  cases.push_back({Greedy({1, -2}, 4), "prompt[1]"});
  cases.push_back({Greedy({1}, 0), "max_new_tokens"});
  cases.push_back({Greedy({1}, 1000000), "max_tokens_per_seq"});
  GenerationRequest bad_temp = Greedy({1}, 2);
  bad_temp.sampling.temperature = -1;
  cases.push_back({bad_temp, "temperature"});
  GenerationRequest bad_top_p = Greedy({1}, 2);
  bad_top_p.sampling.top_p = 0;
  cases.push_back({bad_top_p, "top_p"});
  GenerationRequest bad_stop = Greedy({1}, 2);
  bad_stop.stop_token_ids = {static_cast<int32_t>(vocab + 5)};
  cases.push_back({bad_stop, "stop_token_ids[0]"});

  std::vector<GenerationRequest> requests = {Greedy({3, 4}, 3)};
  for (const Case& c : cases) requests.push_back(c.request);
  requests.push_back(Greedy({5, 6}, 3));
  auto results = engine->Generate(requests);
  ASSERT_EQ(results.size(), requests.size());
  EXPECT_TRUE(results.front().ok()) << results.front().status();
  EXPECT_TRUE(results.back().ok()) << results.back().status();
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& r = results[i + 1];
    ASSERT_FALSE(r.ok()) << cases[i].field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(r.status().message(), cases[i].field)) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), absl::StrCat("request ", i + 1)))
        << r.status();
  }
}

// SubmitBatch: one entry per request (an id, or the bad one's error naming the field), every
// token through the shared callback, and the same results as Generate of the same batch.
TEST(EngineTest, SubmitBatchQueuesAllAtOnceAndStreams) {
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  std::vector<GenerationRequest> requests = {Sampled({3, 4, 5}, 6, 21), Greedy({1}, 0),
                                             Greedy({7, 8}, 5)};
  std::atomic<int64_t> streamed{0};
  const auto ids = engine->SubmitBatch(
      requests, [&streamed](const TokenEvent& e) { streamed += e.token >= 0 ? 1 : 0; });
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_TRUE(ids[0].ok()) << ids[0].status();
  ASSERT_FALSE(ids[1].ok());
  EXPECT_TRUE(absl::StrContains(ids[1].status().message(), "max_new_tokens")) << ids[1].status();
  ASSERT_TRUE(ids[2].ok()) << ids[2].status();
  const auto first = engine->Await(*ids[0]);
  const auto third = engine->Await(*ids[2]);
  ASSERT_TRUE(first.ok() && third.ok());
  EXPECT_EQ(streamed.load(), 11);
  const auto again = engine->Generate({requests[0], requests[2]});
  ASSERT_TRUE(again[0].ok() && again[1].ok());
  EXPECT_EQ(again[0]->tokens, first->tokens);
  EXPECT_TRUE(SameBits(again[0]->logprobs, first->logprobs));
  EXPECT_EQ(again[1]->tokens, third->tokens);
}

TEST(EngineTest, CreateErrorsNameTheFileOrOption) {
  auto missing = Engine::Create("models/no-such-model", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "models/no-such-model/config.json"))
      << missing.status();

  const auto bad = [](EngineOptions o, absl::string_view field) {
    auto e = Engine::Create(std::string("models/") + kModel, o);
    ASSERT_FALSE(e.ok()) << field;
    EXPECT_TRUE(absl::StrContains(e.status().message(), field)) << e.status();
  };
  EngineOptions o;
  o.backend = "tpu";
  bad(o, "backend");
  o = {};
  o.dtype = "f8";
  bad(o, "dtype");
  o = {};
  o.max_batch_tokens = 0;
  bad(o, "max_batch_tokens");
  o = {};
  o.block_size = -3;
  bad(o, "block_size");
  o = {};
  o.kv_cache_bytes = 10;
  bad(o, "kv_cache_bytes");
  o = {};
  o.max_tokens_per_seq = 100000000;
  bad(o, "max_tokens_per_seq");
}

// A copy of the model folder with model.safetensors cut to `keep_bytes`.
std::string TruncatedModel(const std::string& model, size_t keep_bytes) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + model + "-truncated";
  const std::string src = "models/" + model;
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  std::ifstream in(src + "/model.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir + "/model.safetensors", std::ios::binary | std::ios::trunc)
      << bytes.substr(0, std::min(keep_bytes, bytes.size()));
  return dir;
}

TEST(EngineTest, CorruptCheckpointIsAStatusNamingTheFile) {
  for (size_t keep : {size_t{0}, size_t{5}, size_t{200}, size_t{100000}}) {
    const std::string dir = TruncatedModel(kModel, keep);
    auto engine = Engine::Create(dir, {});
    ASSERT_FALSE(engine.ok()) << keep;
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
    EXPECT_TRUE(absl::StrContains(engine.status().message(), dir + "/model.safetensors"))
        << engine.status();
  }
  // No weights at all: NotFound naming what was looked for.
  const std::string empty = std::string(::testing::TempDir()) + "/config-only";
  std::filesystem::create_directories(empty);
  std::filesystem::copy_file(std::string("models/") + kModel + "/config.json",
                             empty + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto engine = Engine::Create(empty, {});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "model.safetensors")) << engine.status();
}

TEST(EngineTest, ShutdownCancelsWhatIsLeftAndRefusesNewWork) {
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  std::vector<RequestId> ids;
  std::atomic<int> last_events{0};
  for (int i = 0; i < 4; ++i) {
    auto id = engine->Submit(Greedy({1, 2, 3}, 200), [&](const TokenEvent& e) {
      if (e.finished) {
        EXPECT_EQ(e.finish_reason, FinishReason::kCancelled);
        EXPECT_EQ(e.token, -1);
        ++last_events;
      }
    });
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  std::thread stopper([&] { engine->Shutdown(); });
  stopper.join();
  for (RequestId id : ids) {
    auto r = engine->Await(id);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LE(r->tokens.size(), 200u);
  }
  EXPECT_EQ(last_events.load(), 4);
  EXPECT_EQ(engine->Submit(Greedy({1}, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  engine->Shutdown();  // idempotent
}

// Many threads submitting and awaiting at once.
TEST(EngineTest, ConcurrentSubmittersAllComplete) {
  auto engine = MakeEngine(kModel);
  ASSERT_NE(engine, nullptr);
  auto want = Unwrap(engine->Generate({Sampled({9, 8, 7}, 6, 3)}))[0];
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        auto got = engine->Generate({Sampled({9, 8, 7}, 6, 3)});
        if (!got[0].ok() || got[0]->tokens != want.tokens) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace moe
