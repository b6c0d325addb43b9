#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

SchedulerOptions Options(int64_t max_batch_tokens, int64_t max_seqs, int64_t num_blocks,
                         int64_t block_size = 4, int64_t max_blocks_per_seq = 64) {
  SchedulerOptions o;
  o.max_batch_tokens = max_batch_tokens;
  o.max_seqs = max_seqs;
  o.num_blocks = num_blocks;
  o.block_size = block_size;
  o.max_blocks_per_seq = max_blocks_per_seq;
  return o;
}

Scheduler Make(const SchedulerOptions& options) {
  absl::StatusOr<Scheduler> s = Scheduler::Create(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(s).value();
}

// "1:[0,4) 2:[3,4)s": seq_id:[start, start + count), "s" where the chunk samples.
std::string Describe(const StepPlan& plan) {
  std::vector<std::string> parts;
  for (const ScheduledChunk& c : plan.chunks) {
    parts.push_back(
        absl::StrCat(c.seq_id, ":[", c.start, ",", c.start + c.count, ")", c.samples ? "s" : ""));
  }
  return absl::StrJoin(parts, " ");
}

// One whole step: Schedule, check the token count, Complete. Returns the plan described.
std::string Step(Scheduler& s) {
  const StepPlan plan = s.Schedule();
  int64_t tokens = 0;
  for (const ScheduledChunk& c : plan.chunks) tokens += c.count;
  EXPECT_EQ(plan.tokens, tokens);
  EXPECT_LE(plan.tokens, s.options().max_batch_tokens);
  EXPECT_TRUE(s.Complete(plan).ok());
  return Describe(plan);
}

void Append(Scheduler& s, std::initializer_list<int64_t> ids) {
  for (int64_t id : ids) EXPECT_TRUE(s.AppendToken(id).ok()) << id;
}

int64_t Reserved(const Scheduler& s, int64_t seq_id) {
  absl::StatusOr<int64_t> tokens = s.blocks().ReservedTokens(seq_id);
  EXPECT_TRUE(tokens.ok()) << tokens.status();
  return tokens.ok() ? *tokens : -1;
}

TEST(SchedulerCreateTest, RejectsBadOptionsNamingTheField) {
  struct Case {
    SchedulerOptions options;
    const char* message;
  };
  for (const Case& c : {
           Case{Options(0, 4, 8), "scheduler: max_batch_tokens=0 must be >= 1"},
           Case{Options(-3, 4, 8), "scheduler: max_batch_tokens=-3 must be >= 1"},
           Case{Options(16, 0, 8), "scheduler: max_seqs=0 must be >= 1"},
           Case{Options(16, 4, 0), "kv_cache: num_blocks=0 must be >= 1"},
           Case{Options(16, 4, 8, 0), "kv_cache: block_size=0 must be >= 1"},
           Case{Options(16, 4, 8, 4, 0), "kv_cache: max_blocks_per_seq=0 must be >= 1"},
           Case{SchedulerOptions(), "kv_cache: num_blocks=0 must be >= 1"},
       }) {
    absl::StatusOr<Scheduler> s = Scheduler::Create(c.options);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message(), c.message);
  }
  EXPECT_TRUE(Scheduler::Create(Options(1, 1, 1, 1, 1)).ok());
}

TEST(SchedulerAddTest, ValidatesTokensAtTheExactLimits) {
  // block_size 4, at most 3 blocks per sequence: 12 tokens is the limit.
  Scheduler s = Make(Options(16, 4, 8, 4, 3));
  absl::Status st = s.Add(1, 0, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "scheduler: sequence 1: prompt_tokens=0 must be >= 1");
  EXPECT_EQ(s.Add(1, -1, 4).code(), absl::StatusCode::kInvalidArgument);

  st = s.Add(1, 5, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "scheduler: sequence 1: max_total_tokens=4 is below prompt_tokens=5");

  st = s.Add(1, 5, 13);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "scheduler: sequence 1 can never fit: max_total_tokens=13 needs 4 blocks of "
            "block_size=4, limit is 3 blocks (num_blocks=8, max_blocks_per_seq=3)");
  EXPECT_EQ(s.num_waiting(), 0);  // nothing changed on error
  EXPECT_FALSE(s.Contains(1));
  EXPECT_FALSE(s.blocks().Contains(1));

  EXPECT_TRUE(s.Add(1, 1, 1).ok());    // prompt == 1, max_total == prompt
  EXPECT_TRUE(s.Add(2, 12, 12).ok());  // exactly the block limit
  EXPECT_TRUE(s.Add(3, 11, 12).ok());
  EXPECT_EQ(s.num_waiting(), 3);
}

TEST(SchedulerAddTest, CanNeverFitAlsoWhenTheWholeCacheIsSmaller) {
  // max_blocks_per_seq 100 but only 2 blocks of 4: 8 tokens is the limit.
  Scheduler s = Make(Options(16, 4, 2, 4, 100));
  EXPECT_TRUE(s.Add(1, 8, 8).ok());
  absl::Status st = s.Add(2, 1, 9);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("max_total_tokens=9 needs 3 blocks"));
  EXPECT_THAT(st.message(), HasSubstr("limit is 2 blocks"));
}

TEST(SchedulerAddTest, KnownIdIsAlreadyExistsWaitingOrRunning) {
  Scheduler s = Make(Options(16, 1, 8));
  ASSERT_TRUE(s.Add(1, 2, 4).ok());
  ASSERT_TRUE(s.Add(2, 2, 4).ok());
  Step(s);  // 1 runs, 2 waits (max_seqs 1)
  ASSERT_TRUE(s.IsRunning(1));
  for (int64_t id : {1, 2}) {
    absl::Status st = s.Add(id, 1, 1);
    EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(st.message(),
              absl::StrCat("scheduler: sequence ", id, " is already waiting or running"));
  }
  // Even an invalid request for a known id reports AlreadyExists first.
  EXPECT_EQ(s.Add(1, 0, 0).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(s.Remove(1).ok());
  EXPECT_TRUE(s.Add(1, 1, 1).ok());  // a removed id may come back
}

TEST(SchedulerTest, AdmitsInFifoOrder) {
  Scheduler s = Make(Options(64, 2, 64));
  for (int64_t id : {30, 10, 20}) ASSERT_TRUE(s.Add(id, 2, 8).ok());
  EXPECT_EQ(s.num_waiting(), 3);
  EXPECT_EQ(s.num_running(), 0);
  EXPECT_EQ(Step(s), "30:[0,2)s 10:[0,2)s");  // Add order, not id order
  EXPECT_TRUE(s.IsRunning(30));
  EXPECT_TRUE(s.IsRunning(10));
  EXPECT_FALSE(s.IsRunning(20));
  EXPECT_TRUE(s.Contains(20));
  EXPECT_EQ(s.num_waiting(), 1);
  ASSERT_TRUE(s.Remove(30).ok());
  Append(s, {10});
  EXPECT_EQ(Step(s), "10:[2,3)s 20:[0,2)s");
}

TEST(SchedulerTest, MaxSeqsHonoured) {
  Scheduler s = Make(Options(1000, 3, 64));
  for (int64_t id = 1; id <= 5; ++id) ASSERT_TRUE(s.Add(id, 4, 8).ok());
  EXPECT_EQ(Step(s), "1:[0,4)s 2:[0,4)s 3:[0,4)s");
  EXPECT_EQ(s.num_running(), 3);
  EXPECT_EQ(s.num_waiting(), 2);
  Append(s, {1, 2, 3});
  EXPECT_EQ(Step(s), "1:[4,5)s 2:[4,5)s 3:[4,5)s");
  EXPECT_EQ(s.num_running(), 3);
}

TEST(SchedulerTest, RunningSequencesAreCappedByTheTokenBudgetSoDecodesAlwaysFit) {
  // max_seqs 10 but only 3 tokens a step: a 4th running sequence could not even decode.
  Scheduler s = Make(Options(3, 10, 64));
  EXPECT_EQ(s.max_running(), 3);
  for (int64_t id = 1; id <= 5; ++id) ASSERT_TRUE(s.Add(id, 1, 8).ok());
  EXPECT_EQ(Step(s), "1:[0,1)s 2:[0,1)s 3:[0,1)s");
  EXPECT_EQ(s.num_running(), 3);
  Append(s, {1, 2, 3});
  EXPECT_EQ(Step(s), "1:[1,2)s 2:[1,2)s 3:[1,2)s");  // the budget, exactly
  EXPECT_EQ(s.num_running(), 3);
  EXPECT_EQ(s.num_waiting(), 2);
  ASSERT_TRUE(s.Remove(2).ok());
  Append(s, {1, 3});
  EXPECT_EQ(Step(s), "1:[2,3)s 3:[2,3)s 4:[0,1)s");
  EXPECT_EQ(s.num_running(), 3);

  // max_seqs is the smaller cap.
  EXPECT_EQ(Make(Options(3, 2, 64)).max_running(), 2);
}

TEST(SchedulerTest, KvBudgetHonouredAndWaitingSequenceAdmittedAfterRemove) {
  // 4 blocks of 4 tokens.
  Scheduler s = Make(Options(64, 8, 4));
  ASSERT_TRUE(s.Add(1, 3, 8).ok());  // 2 blocks
  ASSERT_TRUE(s.Add(2, 5, 8).ok());  // 2 blocks
  ASSERT_TRUE(s.Add(3, 1, 4).ok());  // 1 block: does not fit now
  EXPECT_EQ(Step(s), "1:[0,3)s 2:[0,5)s");
  EXPECT_EQ(s.blocks().blocks_used(), 4);
  EXPECT_EQ(Reserved(s, 1), 8);  // reserved for max_total_tokens at admission
  EXPECT_EQ(Reserved(s, 2), 8);
  EXPECT_EQ(Reserved(s, 3), 0);  // waiting: tracked, no blocks
  EXPECT_FALSE(s.IsRunning(3));
  Append(s, {1, 2});
  EXPECT_EQ(Step(s), "1:[3,4)s 2:[5,6)s");
  EXPECT_FALSE(s.IsRunning(3));

  ASSERT_TRUE(s.Remove(1).ok());
  EXPECT_EQ(s.blocks().blocks_used(), 2);  // freed at once
  EXPECT_FALSE(s.blocks().Contains(1));
  Append(s, {2});
  EXPECT_EQ(Step(s), "2:[6,7)s 3:[0,1)s");
  EXPECT_TRUE(s.IsRunning(3));
  EXPECT_EQ(s.blocks().blocks_used(), 3);
}

TEST(SchedulerTest, HeadOfLineBlocksSmallerRequestsBehindIt) {
  Scheduler s = Make(Options(64, 8, 4));
  ASSERT_TRUE(s.Add(1, 9, 12).ok());  // 3 blocks
  EXPECT_EQ(Step(s), "1:[0,9)s");
  ASSERT_TRUE(s.Add(2, 5, 8).ok());  // 2 blocks: does not fit next to 1
  ASSERT_TRUE(s.Add(3, 1, 4).ok());  // 1 block: would fit, but 2 is older
  Append(s, {1});
  EXPECT_EQ(Step(s), "1:[9,10)s");
  EXPECT_FALSE(s.IsRunning(2));
  EXPECT_FALSE(s.IsRunning(3));
  EXPECT_EQ(s.blocks().blocks_free(), 1);
  ASSERT_TRUE(s.Remove(1).ok());
  EXPECT_EQ(Step(s), "2:[0,5)s 3:[0,1)s");
}

TEST(SchedulerTest, ChunkedPrefillFillsTheBudgetExactly) {
  Scheduler s = Make(Options(4, 8, 64));
  ASSERT_TRUE(s.Add(1, 10, 12).ok());
  ASSERT_TRUE(s.Add(2, 3, 5).ok());
  EXPECT_EQ(Step(s), "1:[0,4)");
  EXPECT_EQ(Step(s), "1:[4,8)");
  EXPECT_EQ(Step(s), "1:[8,10)s 2:[0,2)");  // 2's prompt continues where the budget allows
  Append(s, {1});
  EXPECT_EQ(Step(s), "1:[10,11)s 2:[2,3)s");  // decode first, then the rest of 2's prompt
  Append(s, {1, 2});
  EXPECT_EQ(Step(s), "1:[11,12)s 2:[3,4)s");
  EXPECT_EQ(Step(s), "");  // both wait for AppendToken
}

TEST(SchedulerTest, DecodesComeFirstAndPrefillGetsTheRest) {
  Scheduler s = Make(Options(5, 8, 64));
  for (int64_t id = 1; id <= 3; ++id) ASSERT_TRUE(s.Add(id, 1, 16).ok());
  EXPECT_EQ(Step(s), "1:[0,1)s 2:[0,1)s 3:[0,1)s");
  ASSERT_TRUE(s.Add(4, 7, 16).ok());
  Append(s, {1, 3});  // 2 has not appended: nothing to compute for it
  EXPECT_EQ(Step(s), "1:[1,2)s 3:[1,2)s 4:[0,3)");
  Append(s, {1, 2, 3});
  EXPECT_EQ(Step(s), "1:[2,3)s 2:[1,2)s 3:[2,3)s 4:[3,5)");
  Append(s, {1, 2, 3});
  EXPECT_EQ(Step(s), "1:[3,4)s 2:[2,3)s 3:[3,4)s 4:[5,7)s");
}

TEST(SchedulerTest, RemoveWaitingAndRunning) {
  Scheduler s = Make(Options(64, 1, 8));
  ASSERT_TRUE(s.Add(1, 4, 8).ok());
  ASSERT_TRUE(s.Add(2, 4, 8).ok());
  ASSERT_TRUE(s.Add(3, 4, 8).ok());
  EXPECT_EQ(Step(s), "1:[0,4)s");
  const int64_t used = s.blocks().blocks_used();
  ASSERT_TRUE(s.Remove(2).ok());  // waiting: no blocks to free
  EXPECT_FALSE(s.Contains(2));
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(s.blocks().blocks_used(), used);
  ASSERT_TRUE(s.Remove(1).ok());  // running
  EXPECT_FALSE(s.Contains(1));
  EXPECT_EQ(s.num_running(), 0);
  EXPECT_EQ(s.blocks().blocks_used(), 0);
  EXPECT_EQ(Step(s), "3:[0,4)s");

  absl::Status st = s.Remove(9);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(st.message(), "scheduler: unknown sequence 9");
  EXPECT_EQ(s.Remove(1).code(), absl::StatusCode::kNotFound);
}

TEST(SchedulerTest, RemoveDuringAStepDropsOnlyThatSequencesChunk) {
  Scheduler s = Make(Options(64, 8, 8));
  ASSERT_TRUE(s.Add(1, 4, 8).ok());
  ASSERT_TRUE(s.Add(2, 4, 8).ok());
  const StepPlan plan = s.Schedule();
  EXPECT_EQ(Describe(plan), "1:[0,4)s 2:[0,4)s");
  ASSERT_TRUE(s.Remove(1).ok());     // cancelled while the step runs
  ASSERT_TRUE(s.Add(1, 2, 4).ok());  // and the id comes back at once, waiting
  ASSERT_TRUE(s.Complete(plan).ok());
  EXPECT_TRUE(s.AppendToken(2).ok());                                         // 2 advanced
  EXPECT_EQ(s.AppendToken(1).code(), absl::StatusCode::kFailedPrecondition);  // the new 1 did not
  EXPECT_EQ(Step(s), "2:[4,5)s 1:[0,2)s");
}

TEST(SchedulerTest, CompleteNeedsThePendingPlanOnce) {
  Scheduler s = Make(Options(64, 8, 8));
  EXPECT_EQ(s.Complete(StepPlan()).code(), absl::StatusCode::kFailedPrecondition);  // none yet
  ASSERT_TRUE(s.Add(1, 4, 8).ok());
  const StepPlan first = s.Schedule();
  const StepPlan second = s.Schedule();  // abandons the first, which is planned again
  EXPECT_EQ(second, first);
  ASSERT_TRUE(s.Add(2, 2, 4).ok());
  const StepPlan third = s.Schedule();
  EXPECT_EQ(Describe(third), "1:[0,4)s 2:[0,2)s");

  absl::Status st = s.Complete(first);  // stale: Schedule ran since
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(),
            "scheduler: Complete needs the plan the last Schedule returned, once; this plan is "
            "stale or already completed");
  StepPlan altered = third;
  altered.chunks[1].count = 1;
  altered.tokens = 5;
  EXPECT_EQ(s.Complete(altered).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.AppendToken(1).code(), absl::StatusCode::kFailedPrecondition);  // nothing changed

  ASSERT_TRUE(s.Complete(third).ok());
  EXPECT_EQ(s.Complete(third).code(), absl::StatusCode::kFailedPrecondition);  // twice
  Append(s, {1, 2});
  EXPECT_EQ(Step(s), "1:[4,5)s 2:[2,3)s");
}

TEST(SchedulerTest, AppendTokenNeedsAFullyComputedSequenceBelowItsMax) {
  Scheduler s = Make(Options(4, 1, 8));
  ASSERT_TRUE(s.Add(1, 6, 8).ok());
  ASSERT_TRUE(s.Add(2, 1, 4).ok());
  absl::Status st = s.AppendToken(7);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(st.message(), "scheduler: unknown sequence 7");
  // Waiting: nothing computed.
  st = s.AppendToken(2);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(),
            "scheduler: sequence 2 has computed 0 of its 1 known tokens; AppendToken needs all "
            "of them computed");
  EXPECT_EQ(Step(s), "1:[0,4)");
  EXPECT_EQ(s.AppendToken(1).code(), absl::StatusCode::kFailedPrecondition);  // mid-prefill
  const StepPlan plan = s.Schedule();
  EXPECT_EQ(Describe(plan), "1:[4,6)s");
  EXPECT_EQ(s.AppendToken(1).code(), absl::StatusCode::kFailedPrecondition);  // not completed
  ASSERT_TRUE(s.Complete(plan).ok());
  Append(s, {1});  // 7 known
  EXPECT_EQ(Step(s), "1:[6,7)s");
  Append(s, {1});  // 8 known: max_total_tokens
  EXPECT_EQ(Step(s), "1:[7,8)s");
  st = s.AppendToken(1);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "scheduler: sequence 1 already holds max_total_tokens=8 known tokens");
}

TEST(SchedulerTest, EmptySchedulerPlansNothing) {
  Scheduler s = Make(Options(8, 2, 4));
  const StepPlan plan = s.Schedule();
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(plan.tokens, 0);
  EXPECT_TRUE(s.Complete(plan).ok());
}

// A fixed script over most of the API; its plans and the KV blocks of each step, in order.
std::vector<std::string> Script() {
  Scheduler s = Make(Options(6, 3, 6));
  std::vector<std::string> trace;
  EXPECT_TRUE(s.Add(5, 9, 12).ok());
  EXPECT_TRUE(s.Add(3, 2, 6).ok());
  EXPECT_TRUE(s.Add(8, 4, 8).ok());
  EXPECT_TRUE(s.Add(1, 3, 4).ok());
  for (int step = 0; step < 12; ++step) {
    if (step == 1) {
      EXPECT_TRUE(s.Add(7, 2, 4).ok());
    } else if (step == 3) {
      EXPECT_TRUE(s.Remove(7).ok());  // waiting
    } else if (step == 4) {
      EXPECT_TRUE(s.Add(9, 5, 7).ok());
    } else if (step == 6) {
      EXPECT_TRUE(s.Remove(8).ok());  // running
    }
    trace.push_back(Step(s));
    for (int64_t id : {5, 3, 8, 1, 9}) {
      if (!s.IsRunning(id)) continue;
      trace.push_back(absl::StrCat(id, " blocks ", absl::StrJoin(*s.blocks().BlocksOf(id), ",")));
      // Sampled sequences go on until their max_total_tokens, then finish.
      const absl::Status st = s.AppendToken(id);
      if (absl::StrContains(st.message(), "max_total_tokens")) {
        EXPECT_TRUE(s.Remove(id).ok());
      }
    }
  }
  return trace;
}

TEST(SchedulerTest, SameCallsGiveTheSamePlansAndSlots) {
  const std::vector<std::string> first = Script();
  EXPECT_EQ(Script(), first);
  EXPECT_EQ(first[0], "5:[0,6)");
}

// ---------------------------------------------------------------------------------------------
// Randomized simulation: a generator's loop over many sequences with random lengths, random
// early finishes and cancellations, checking the scheduler's invariants at every step.

struct SimConfig {
  SchedulerOptions options;
  int64_t num_seqs;
  int64_t max_prompt;
  int64_t max_new;
  uint64_t seed;
};

// What the test knows about a sequence, kept independently of the scheduler.
struct SimSeq {
  int64_t prompt = 0;
  int64_t max_total = 0;
  int64_t known = 0;
  int64_t computed = 0;
  int64_t admitted_at = -1;  // admission index once running
};

class Simulation {
 public:
  explicit Simulation(const SimConfig& config)
      : config_(config), s_(Make(config.options)), rng_(config.seed) {}

  // Runs until every sequence is added and gone; returns the plans described, step by step.
  std::vector<std::string> Run() {
    std::vector<std::string> trace;
    for (int64_t step = 0; step < 100000; ++step) {
      if (next_id_ == config_.num_seqs && live_.empty()) break;
      MaybeAdd();
      MaybeCancel();
      StepPlan plan = s_.Schedule();
      if (Chance(0.05)) {
        const StepPlan again = s_.Schedule();  // the first is abandoned and planned again
        EXPECT_EQ(again, plan);
      }
      CheckState();
      CheckPlan(plan);
      if (::testing::Test::HasFailure()) break;
      EXPECT_TRUE(s_.Complete(plan).ok());
      EXPECT_EQ(s_.Complete(plan).code(), absl::StatusCode::kFailedPrecondition);
      ApplyAndSample(plan);
      trace.push_back(Describe(plan));
    }
    EXPECT_EQ(next_id_, config_.num_seqs);
    EXPECT_TRUE(live_.empty());
    EXPECT_EQ(s_.num_waiting(), 0);
    EXPECT_EQ(s_.num_running(), 0);
    EXPECT_EQ(s_.blocks().blocks_free(), config_.options.num_blocks);
    EXPECT_EQ(s_.blocks().num_sequences(), 0);
    EXPECT_GT(finished_, 0);
    return trace;
  }

 private:
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }

  void MaybeAdd() {
    const int64_t n = Uniform(0, 2);
    for (int64_t i = 0; i < n && next_id_ < config_.num_seqs; ++i) {
      const int64_t id = next_id_++;
      SimSeq seq;
      seq.prompt = Uniform(1, config_.max_prompt);
      seq.max_total = seq.prompt + Uniform(0, config_.max_new);
      seq.known = seq.prompt;
      const absl::Status st = s_.Add(id, seq.prompt, seq.max_total);
      if (!s_.blocks().CanEverFit(seq.max_total)) {
        EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(st.message(), HasSubstr(absl::StrCat("max_total_tokens=", seq.max_total)));
        continue;
      }
      EXPECT_TRUE(st.ok()) << st;
      live_[id] = seq;
    }
  }

  void MaybeCancel() {
    if (live_.empty() || !Chance(0.03)) return;
    auto it = live_.begin();
    std::advance(it, Uniform(0, static_cast<int64_t>(live_.size()) - 1));
    EXPECT_TRUE(s_.Remove(it->first).ok());
    live_.erase(it);
  }

  // Admission: FIFO, head-of-line, caps, blocks reserved for max_total_tokens.
  void CheckState() {
    int64_t max_running_id = -1, min_waiting_id = -1, blocks = 0;
    for (auto& [id, seq] : live_) {  // ascending id == Add order
      if (!s_.IsRunning(id)) {
        if (min_waiting_id < 0) min_waiting_id = id;
        EXPECT_EQ(Reserved(s_, id), 0);
        continue;
      }
      if (seq.admitted_at < 0) seq.admitted_at = next_admission_++;
      max_running_id = id;
      blocks += s_.blocks().BlocksForTokens(seq.max_total);
      EXPECT_EQ(Reserved(s_, id), seq.max_total);
    }
    const int64_t cap = std::min(config_.options.max_seqs, config_.options.max_batch_tokens);
    EXPECT_LE(s_.num_running(), cap);
    EXPECT_EQ(s_.blocks().blocks_used(), blocks);
    EXPECT_LE(blocks, config_.options.num_blocks);
    if (min_waiting_id < 0) return;
    EXPECT_LT(max_running_id, min_waiting_id) << "FIFO";
    if (s_.num_running() < cap) {  // only lack of blocks keeps the head waiting
      EXPECT_GT(s_.blocks().BlocksForTokens(live_[min_waiting_id].max_total),
                s_.blocks().blocks_free());
    }
  }

  void CheckPlan(const StepPlan& plan) {
    const int64_t budget = config_.options.max_batch_tokens;
    int64_t tokens = 0, last_admission = -1;
    bool in_prefills = false;
    std::set<int64_t> planned;
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      const ScheduledChunk& c = plan.chunks[i];
      ASSERT_TRUE(live_.count(c.seq_id)) << c.seq_id;
      const SimSeq& seq = live_[c.seq_id];
      EXPECT_TRUE(s_.IsRunning(c.seq_id));
      EXPECT_TRUE(planned.insert(c.seq_id).second) << "twice in one plan: " << c.seq_id;
      EXPECT_GE(c.count, 1);
      EXPECT_EQ(c.start, seq.computed);
      EXPECT_LE(c.start + c.count, seq.known);
      EXPECT_EQ(c.samples, c.start + c.count == seq.known);
      const bool prefill = c.start < seq.prompt;
      if (!prefill) {
        EXPECT_EQ(c.count, 1);
      }
      EXPECT_FALSE(in_prefills && !prefill) << "decode after prefill";
      if (prefill && !in_prefills) last_admission = -1;
      in_prefills = in_prefills || prefill;
      EXPECT_GT(seq.admitted_at, last_admission) << "admission order";
      last_admission = seq.admitted_at;
      if (!c.samples) {  // a cut chunk: only the last one, at a full budget
        EXPECT_EQ(i + 1, plan.chunks.size());
        EXPECT_EQ(plan.tokens, budget);
      }
      tokens += c.count;
    }
    EXPECT_EQ(plan.tokens, tokens);
    EXPECT_LE(tokens, budget);
    for (const auto& [id, seq] : live_) {
      if (!s_.IsRunning(id) || seq.computed == seq.known) continue;
      // Decodes are never starved; prefill stops only at a full budget.
      if (seq.computed >= seq.prompt || tokens < budget) {
        EXPECT_TRUE(planned.count(id)) << id;
      }
    }
    // Liveness: whatever is live can always run something.
    if (!live_.empty()) {
      EXPECT_FALSE(plan.empty());
    }
  }

  void ApplyAndSample(const StepPlan& plan) {
    for (const ScheduledChunk& c : plan.chunks) {
      SimSeq& seq = live_[c.seq_id];
      seq.computed += c.count;
      if (!c.samples) continue;
      EXPECT_EQ(seq.computed, seq.known);  // every known token was computed
      if (seq.known == seq.max_total || Chance(0.05)) {
        EXPECT_TRUE(s_.Remove(c.seq_id).ok());
        live_.erase(c.seq_id);
        ++finished_;
      } else {
        EXPECT_TRUE(s_.AppendToken(c.seq_id).ok());
        ++seq.known;
      }
    }
  }

  SimConfig config_;
  Scheduler s_;
  std::mt19937_64 rng_;
  std::map<int64_t, SimSeq> live_;  // added and not removed, by id (ids are in Add order)
  int64_t next_id_ = 0;
  int64_t next_admission_ = 0;
  int64_t finished_ = 0;
};

class SchedulerSimulationTest : public ::testing::TestWithParam<SimConfig> {};

TEST_P(SchedulerSimulationTest, InvariantsHoldEveryStep) {
  Simulation sim(GetParam());
  const std::vector<std::string> trace = sim.Run();
  EXPECT_FALSE(trace.empty());
}

TEST_P(SchedulerSimulationTest, SameSeedSamePlans) {
  const std::vector<std::string> first = Simulation(GetParam()).Run();
  EXPECT_EQ(Simulation(GetParam()).Run(), first);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, SchedulerSimulationTest,
    ::testing::Values(
        // Roomy cache, moderate budget.
        SimConfig{Options(16, 8, 64, 4, 32), 200, 40, 20, 1},
        SimConfig{Options(16, 8, 64, 4, 32), 200, 40, 20, 2},
        // Tight budget below max_seqs: the token cap on running sequences.
        SimConfig{Options(3, 64, 12, 2, 12), 200, 12, 8, 3},
        // Tight cache: most admissions wait for blocks; some requests can never fit.
        SimConfig{Options(64, 16, 8, 16, 6), 150, 90, 40, 4},
        // One token, one sequence at a time.
        SimConfig{Options(1, 1, 4, 4, 4), 60, 10, 6, 5},
        // Long prompts over a small budget: chunked prefill everywhere.
        SimConfig{Options(7, 4, 200, 8, 40), 120, 200, 30, 6}));

}  // namespace
}  // namespace moe
