// moe::Engine expert parallel with ranks as threads (LocalCommunicatorGroup): rank 0's Generate
// (greedy and seeded sampling with log-probs, a rejected request, a streaming Submit and a
// Forward) bit-identical to a one-device Engine for P = 2 and 4 and the three equal-split modes,
// the other ranks in ServeExpertParallel until rank 0's Shutdown; an idle rank 0 longer than the
// timeout; a rank that never serves (a Status naming the rank and op, no hang); Create failing
// on one rank fails every rank; the calls a serving rank refuses.
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "engine/dist/local_communicator.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

constexpr char kModel[] = "models/qwen3-moe-tiny";

EngineOptions SmallOptions() {
  EngineOptions o;
  o.threads = 1;
  o.kv_cache_bytes = int64_t{4} << 20;
  o.max_batch_tokens = 8;  // chunked prefill: steps mix prefill and decode
  return o;
}

std::vector<GenerationRequest> Requests() {
  std::vector<GenerationRequest> out;
  const int lengths[] = {5, 1, 12, 3, 7};
  for (int i = 0; i < 5; ++i) {
    GenerationRequest r;
    for (int j = 0; j < lengths[i]; ++j) r.prompt.push_back((29 * i + 7 * j + 1) % 256);
    r.max_new_tokens = 4 + 2 * i;
    r.ignore_eos = true;
    r.return_logprobs = true;
    if (i % 2 == 1) {
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.9f;
      r.sampling.seed = 100 + i;
    }
    out.push_back(std::move(r));
  }
  out[3].prompt[1] = 256;  // rejected: outside the vocabulary
  return out;
}

// What rank 0 (or one device) produced, with floats as bits.
struct Outputs {
  std::vector<std::string> lines;
};

std::string Bits(const std::vector<float>& v) {
  std::string out;
  for (const float x : v) {
    uint32_t b;
    std::memcpy(&b, &x, sizeof(b));
    absl::StrAppend(&out, b, ",");
  }
  return out;
}

Outputs RunRequests(Engine& engine) {
  Outputs out;
  for (const auto& r : engine.Generate(Requests())) {
    out.lines.push_back(r.ok()
                            ? absl::StrCat(absl::StrJoin(r->tokens, ","), " | ", Bits(r->logprobs),
                                           " | ", FinishReasonName(r->finish_reason))
                            : std::string(r.status().message()));
  }
  // Streaming, as moe_server uses it.
  std::vector<int32_t> streamed;
  absl::StatusOr<RequestId> id = engine.Submit(Requests()[2], [&streamed](const TokenEvent& e) {
    if (e.token >= 0) streamed.push_back(e.token);
  });
  if (!id.ok()) {
    out.lines.push_back(std::string(id.status().message()));
  } else {
    absl::StatusOr<GenerationResult> r = engine.Await(*id);
    out.lines.push_back(r.ok() ? absl::StrCat("streamed ", absl::StrJoin(streamed, ","))
                               : std::string(r.status().message()));
  }
  ForwardRequest f;
  f.sequences = {{3, 1, 4, 1, 5}, {9, 2}};
  absl::StatusOr<std::vector<ForwardResult>> fr = engine.Forward(f);
  if (!fr.ok()) {
    out.lines.push_back(std::string(fr.status().message()));
  } else {
    for (const ForwardResult& x : *fr)
      out.lines.push_back(absl::StrCat("forward ", Bits(x.values)));
  }
  return out;
}

// Runs `body(rank, comm)` on one thread per rank.
void OnRanks(int ranks, absl::Duration timeout,
             const std::function<void(int, Communicator*)>& body) {
  auto group = LocalCommunicatorGroup::Create(ranks, {timeout});
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] { body(r, (*group)->rank(r)); });
  }
  for (auto& t : threads) t.join();
}

struct Case {
  int ranks;
  EngineExpertParallel::EqualSplit mode;
};

class EpEngineTest : public ::testing::TestWithParam<Case> {};

TEST_P(EpEngineTest, GenerateBitIdenticalToOneDevice) {
  auto one = Engine::Create(kModel, SmallOptions());
  ASSERT_TRUE(one.ok()) << one.status();
  const Outputs want = RunRequests(**one);
  ASSERT_EQ(want.lines.size(), 8u);
  EXPECT_TRUE(absl::StrContains(want.lines[3], "request 3: prompt[1]=256 is outside"))
      << want.lines[3];

  Outputs got;
  std::vector<absl::Status> served(GetParam().ranks);
  OnRanks(GetParam().ranks, absl::Seconds(60), [&](int r, Communicator* comm) {
    EngineOptions o = SmallOptions();
    o.expert_parallel.comm = comm;
    o.expert_parallel.equal_split = GetParam().mode;
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->model_info().expert_parallel_rank, r);
    EXPECT_EQ((*engine)->model_info().expert_parallel_size, GetParam().ranks);
    if (r != 0) {
      served[r] = (*engine)->ServeExpertParallel();
      return;
    }
    got = RunRequests(**engine);
    (*engine)->Shutdown();
    EXPECT_TRUE((*engine)->ExpertParallelStatus().ok()) << (*engine)->ExpertParallelStatus();
  });
  ASSERT_EQ(got.lines.size(), want.lines.size());
  for (size_t i = 0; i < want.lines.size(); ++i) EXPECT_EQ(got.lines[i], want.lines[i]) << i;
  for (int r = 1; r < GetParam().ranks; ++r) EXPECT_TRUE(served[r].ok()) << served[r];
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpEngineTest,
                         ::testing::Values(Case{2, EngineExpertParallel::EqualSplit::kAuto},
                                           Case{2, EngineExpertParallel::EqualSplit::kAlways},
                                           Case{2, EngineExpertParallel::EqualSplit::kNever},
                                           Case{4, EngineExpertParallel::EqualSplit::kAuto}));

// Every rank's KV budget holds its own sequences only (one pool per rank): the group's blocks
// are P times one device's, and the expert token counts are the whole group's, equal to one
// device's for the same requests.
TEST(EpEngineKvTest, GroupHoldsOneCachePerRankAndCountsEveryRanksTokens) {
  EngineOptions base = SmallOptions();
  base.count_expert_tokens = true;
  auto one = Engine::Create(kModel, base);
  ASSERT_TRUE(one.ok()) << one.status();
  (*one)->Generate(Requests());
  const EngineStats want = (*one)->Stats();
  ASSERT_GT(want.kv_blocks_total, 0);
  constexpr int kRanks = 3;
  EngineStats got;
  OnRanks(kRanks, absl::Seconds(60), [&](int r, Communicator* comm) {
    EngineOptions o = base;
    o.expert_parallel.comm = comm;
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    if (r != 0) {
      EXPECT_TRUE((*engine)->ServeExpertParallel().ok());
      return;
    }
    (*engine)->Generate(Requests());
    got = (*engine)->Stats();
    (*engine)->Shutdown();
  });
  EXPECT_EQ(got.kv_blocks_total, kRanks * want.kv_blocks_total);
  EXPECT_EQ(got.kv_blocks_used, 0);
  EXPECT_EQ(got.generated_tokens, want.generated_tokens);
  EXPECT_EQ(got.expert_tokens, want.expert_tokens);
}

TEST(EpEngineIdleTest, RankZeroIdleLongerThanTheTimeout) {
  std::vector<absl::Status> served(2);
  std::vector<std::string> lines;
  OnRanks(2, absl::Milliseconds(400), [&](int r, Communicator* comm) {
    EngineOptions o = SmallOptions();
    o.expert_parallel.comm = comm;
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    if (r != 0) {
      served[r] = (*engine)->ServeExpertParallel();
      return;
    }
    absl::SleepFor(absl::Milliseconds(1200));  // idle messages keep rank 1 waiting
    lines = RunRequests(**engine).lines;
    EXPECT_TRUE((*engine)->ExpertParallelStatus().ok()) << (*engine)->ExpertParallelStatus();
  });
  EXPECT_TRUE(served[1].ok()) << served[1];
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_FALSE(absl::StrContains(lines[0], "rank")) << lines[0];
}

TEST(EpEngineFailureTest, RankThatNeverServesGivesAStatusNamingTheOp) {
  OnRanks(2, absl::Milliseconds(300), [&](int r, Communicator* comm) {
    EngineOptions o = SmallOptions();
    o.expert_parallel.comm = comm;
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    if (r != 0) return;  // created, then never serves
    std::vector<GenerationRequest> one = {Requests()[0]};
    const auto results = (*engine)->Generate(one);
    ASSERT_EQ(results.size(), 1u);
    ASSERT_FALSE(results[0].ok());
    const absl::Status group = (*engine)->ExpertParallelStatus();
    EXPECT_EQ(group.code(), absl::StatusCode::kDeadlineExceeded) << group;
    EXPECT_TRUE(absl::StrContains(group.message(), "broadcast on rank 0 of 2 did not complete"))
        << group;
    EXPECT_TRUE(absl::StrContains(results[0].status().message(), "rank 0 of 2"))
        << results[0].status();
  });
}

TEST(EpEngineFailureTest, CreateFailingOnOneRankFailsEveryRank) {
  std::vector<absl::Status> created(2);
  OnRanks(2, absl::Seconds(30), [&](int r, Communicator* comm) {
    EngineOptions o = SmallOptions();
    o.expert_parallel.comm = comm;
    created[r] = Engine::Create(r == 1 ? "models/no-such-model" : kModel, o).status();
  });
  EXPECT_EQ(created[0].code(), absl::StatusCode::kFailedPrecondition) << created[0];
  EXPECT_TRUE(
      absl::StrContains(created[0].message(), "engine rank 0 of 2: Create failed on rank(s) 1"))
      << created[0];
  EXPECT_EQ(created[1].code(), absl::StatusCode::kNotFound) << created[1];
  EXPECT_TRUE(absl::StrContains(created[1].message(), "engine rank 1 of 2: models/no-such-model"))
      << created[1];
}

TEST(EpEngineFailureTest, CallsOnTheWrongRank) {
  auto one = Engine::Create(kModel, SmallOptions());
  ASSERT_TRUE(one.ok()) << one.status();
  const absl::Status alone = (*one)->ServeExpertParallel();
  EXPECT_EQ(alone.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(alone.message(), "without expert parallelism")) << alone;

  std::vector<absl::Status> served(2);
  OnRanks(2, absl::Seconds(30), [&](int r, Communicator* comm) {
    EngineOptions o = SmallOptions();
    o.expert_parallel.comm = comm;
    auto engine = Engine::Create(kModel, o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    if (r == 0) {
      const absl::Status s = (*engine)->ServeExpertParallel();
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_TRUE(absl::StrContains(s.message(), "on rank 0 of 2, which runs the scheduler")) << s;
      return;  // the destructor's Shutdown ends rank 1's serving
    }
    const absl::StatusOr<RequestId> id = (*engine)->Submit(Requests()[0]);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StrContains(id.status().message(), "Submit on rank 1 of 2, which serves"))
        << id.status();
    ForwardRequest f;
    f.sequences = {{1, 2}};
    EXPECT_EQ((*engine)->Forward(f).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*engine)->Await(1).status().code(), absl::StatusCode::kNotFound);
    served[r] = (*engine)->ServeExpertParallel();
    const absl::Status again = (*engine)->ServeExpertParallel();
    EXPECT_TRUE(absl::StrContains(again.message(), "called twice on rank 1 of 2")) << again;
  });
  EXPECT_TRUE(served[1].ok()) << served[1];
}

}  // namespace
}  // namespace moe
