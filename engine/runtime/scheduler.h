// The continuous-batching scheduler: pure host-side policy that decides, step by step, which
// positions of which sequences the model computes. It runs no model and touches no device
// memory; the generator runs each StepPlan and reports back.
//
// Lifecycle of a sequence: Add (waiting) -> admitted by Schedule (running) -> Remove.
// Token counts per sequence:
//   known     prompt tokens plus the tokens appended with AppendToken;
//   computed  positions whose KV the model has written (advanced only by Complete);
//   max_total prompt + max new tokens, the most it may ever hold.
// A running sequence with computed < prompt is prefilling; one with computed == known - 1 past
// its prompt is decoding; one with computed == known waits for its next AppendToken (or Remove).
//
// One step, as the generator drives it:
//   StepPlan plan = scheduler.Schedule();
//   ... run the model over plan.chunks, sample where chunk.samples ...
//   scheduler.Complete(plan);
//   for each sampled sequence: scheduler.AppendToken(id) to go on, or scheduler.Remove(id).
//
// Admission and budget (what Schedule does):
// - Waiting sequences are admitted in FIFO (Add) order, head-of-line: when the oldest waiting
//   sequence does not fit now, nobody behind it is admitted, so a long request is never starved
//   by shorter ones arriving after it.
// - At most min(max_seqs, max_batch_tokens) sequences run at once. Capping by
//   max_batch_tokens too guarantees that one decode token for every running sequence always
//   fits in a step, so decoding sequences are never stalled by the budget.
// - A step holds first one decode token per decoding sequence, then prefill chunks, each as
//   large as the remaining budget allows (chunked prefill), both in admission order. A step
//   never holds more than max_batch_tokens tokens and names a sequence at most once.
//
// Memory policy: KV blocks for a sequence's max_total tokens are reserved at admission (lowest
// free block ids first, through KvBlockManager), so a running sequence never runs out of cache
// and nothing is ever preempted or evicted. Remove frees them at once. A sequence that could
// not fit even in an empty cache is rejected by Add; one that does not fit now waits.
//
// Determinism: no clocks, no randomness, only ordered containers: the same sequence of calls
// gives the same plans and the same KV slots on every run.
//
// Thread-compatibility: not thread-safe. One thread (the generator's) calls the mutating
// methods, or the caller serialises them; const methods may run concurrently with each other.
#ifndef MOE_ENGINE_RUNTIME_SCHEDULER_H_
#define MOE_ENGINE_RUNTIME_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/kv_block_manager.h"

namespace moe {

struct SchedulerOptions {
  int64_t max_batch_tokens = 2048;  // tokens per step, >= 1
  int64_t max_seqs = 64;            // running (admitted) sequences at once, >= 1
  // KV geometry, as KvBlockManager::Create.
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t max_blocks_per_seq = 0;
  KvPartitions partitions;  // expert parallel: one pool per rank
};

// One sequence's work in a step: compute positions [start, start + count) of seq_id.
struct ScheduledChunk {
  int64_t seq_id = 0;
  int64_t start = 0;
  int64_t count = 0;  // >= 1
  // start + count == the sequence's known tokens: its logits at the last row are sampled.
  bool samples = false;
};

// Decode chunks first, then prefill chunks, each group in admission order.
struct StepPlan {
  std::vector<ScheduledChunk> chunks;
  int64_t tokens = 0;  // sum of the chunks' counts, <= max_batch_tokens
  bool empty() const { return chunks.empty(); }
};

inline bool operator==(const ScheduledChunk& a, const ScheduledChunk& b) {
  return a.seq_id == b.seq_id && a.start == b.start && a.count == b.count && a.samples == b.samples;
}
inline bool operator==(const StepPlan& a, const StepPlan& b) {
  return a.tokens == b.tokens && a.chunks == b.chunks;
}

class Scheduler {
 public:
  // InvalidArgument naming the field when max_batch_tokens or max_seqs is < 1, or when the KV
  // geometry is invalid (KvBlockManager::Create's message).
  static absl::StatusOr<Scheduler> Create(const SchedulerOptions& options);

  Scheduler(Scheduler&&) = default;
  Scheduler& operator=(Scheduler&&) = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues seq_id (waiting) with prompt_tokens known tokens that will grow to at most
  // max_total_tokens (prompt + max new). Returns, checked in this order:
  //   AlreadyExists    seq_id is waiting or running;
  //   InvalidArgument  prompt_tokens < 1, max_total_tokens < prompt_tokens, or
  //                    max_total_tokens can never fit in the KV cache (the message names the
  //                    tokens, block_size and the block limit). Nothing changes on error.
  absl::Status Add(int64_t seq_id, int64_t prompt_tokens, int64_t max_total_tokens);

  // Admits what fits (see the top of this file) and plans the next step. An empty plan means
  // nothing can run now (no sequences, or all of them wait for AppendToken or for blocks). A
  // plan not yet completed when Schedule is called again is abandoned: its chunks count as not
  // computed and are planned again.
  StepPlan Schedule();

  // Marks every chunk of the pending plan computed (computed += count). Chunks of sequences
  // removed since Schedule are dropped. FailedPrecondition unless plan equals the plan the
  // last Schedule returned and that plan was not completed yet; nothing changes then.
  absl::Status Complete(const StepPlan& plan);

  // A token was sampled for seq_id and the sequence goes on: known += 1. Returns, checked in
  // this order: NotFound for an unknown id; FailedPrecondition if the sequence is not fully
  // computed (waiting, or computed < known) or already holds max_total_tokens known tokens.
  absl::Status AppendToken(int64_t seq_id);

  // Forgets seq_id, waiting or running (finished, cancelled, failed), and frees its KV blocks
  // at once. NotFound if unknown.
  absl::Status Remove(int64_t seq_id);

  // For slot mappings and block-table rows. It tracks every waiting and running sequence;
  // waiting ones hold no blocks.
  const KvBlockManager& blocks() const { return blocks_; }
  // For a sequence outside the schedule (Generator::ForwardSequence) that takes blocks and
  // frees them again between two Schedule calls, so admission never sees them.
  KvBlockManager& mutable_blocks() { return blocks_; }
  const SchedulerOptions& options() const { return options_; }

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  // The most sequences that run at once: min(max_seqs, max_batch_tokens).
  int64_t max_running() const;
  bool Contains(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  bool IsRunning(int64_t seq_id) const;

 private:
  struct Sequence {
    int64_t prompt = 0;
    int64_t max_total = 0;
    int64_t known = 0;
    int64_t computed = 0;
    bool running = false;
  };

  Scheduler(const SchedulerOptions& options, KvBlockManager blocks);

  // Admits waiting sequences while the head fits and the running cap allows.
  void Admit();
  // Appends one decode token per decoding running sequence to plan.
  void PlanDecodes(StepPlan& plan) const;
  // Appends prefill chunks of running sequences while budget is left.
  void PlanPrefills(StepPlan& plan) const;
  static void Append(StepPlan& plan, int64_t seq_id, const Sequence& seq, int64_t count);

  SchedulerOptions options_;
  KvBlockManager blocks_;
  std::map<int64_t, Sequence> seqs_;
  std::deque<int64_t> waiting_;      // in Add order
  std::vector<int64_t> running_;     // in admission order
  std::optional<StepPlan> pending_;  // returned by Schedule, not completed yet
};

}  // namespace moe

#endif  // MOE_ENGINE_RUNTIME_SCHEDULER_H_
