#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

absl::Status UnknownSequence(int64_t seq_id) {
  return absl::NotFoundError(absl::StrCat("scheduler: unknown sequence ", seq_id));
}

// Removes the one occurrence of seq_id from an id list, keeping the others' order.
template <typename Ids>
void EraseId(Ids& ids, int64_t seq_id) {
  ids.erase(std::find(ids.begin(), ids.end(), seq_id));
}

}  // namespace

absl::StatusOr<Scheduler> Scheduler::Create(const SchedulerOptions& options) {
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler: max_batch_tokens=", options.max_batch_tokens, " must be >= 1"));
  }
  if (options.max_seqs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler: max_seqs=", options.max_seqs, " must be >= 1"));
  }
  absl::StatusOr<KvBlockManager> blocks = KvBlockManager::Create(
      options.num_blocks, options.block_size, options.max_blocks_per_seq, options.partitions);
  if (!blocks.ok()) return blocks.status();
  return Scheduler(options, std::move(blocks).value());
}

Scheduler::Scheduler(const SchedulerOptions& options, KvBlockManager blocks)
    : options_(options), blocks_(std::move(blocks)) {}

int64_t Scheduler::max_running() const {
  return std::min(options_.max_seqs, options_.max_batch_tokens);
}

bool Scheduler::IsRunning(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it != seqs_.end() && it->second.running;
}

absl::Status Scheduler::Add(int64_t seq_id, int64_t prompt_tokens, int64_t max_total_tokens) {
  if (Contains(seq_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("scheduler: sequence ", seq_id, " is already waiting or running"));
  }
  if (prompt_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: sequence ", seq_id, ": prompt_tokens=", prompt_tokens, " must be >= 1"));
  }
  if (max_total_tokens < prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: sequence ", seq_id,
                                                   ": max_total_tokens=", max_total_tokens,
                                                   " is below prompt_tokens=", prompt_tokens));
  }
  if (!blocks_.CanEverFit(max_total_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler: sequence ", seq_id, " can never fit: max_total_tokens=", max_total_tokens,
        " needs ", blocks_.BlocksForTokens(max_total_tokens),
        " blocks of block_size=", blocks_.block_size(), ", limit is ",
        blocks_.max_blocks_for_one_seq(), " blocks (num_blocks=", blocks_.num_blocks(),
        ", max_blocks_per_seq=", blocks_.max_blocks_per_seq(), ")"));
  }
  // Tracked with no blocks while waiting, so that admission is a single Reserve.
  absl::Status tracked = blocks_.AddSequence(seq_id);
  if (!tracked.ok()) return tracked;
  Sequence& seq = seqs_[seq_id];
  seq.prompt = prompt_tokens;
  seq.max_total = max_total_tokens;
  seq.known = prompt_tokens;
  waiting_.push_back(seq_id);
  return absl::OkStatus();
}

StepPlan Scheduler::Schedule() {
  Admit();
  StepPlan plan;
  PlanDecodes(plan);
  PlanPrefills(plan);
  pending_ = plan;
  return plan;
}

void Scheduler::Admit() {
  while (!waiting_.empty() && num_running() < max_running()) {
    const int64_t seq_id = waiting_.front();
    Sequence& seq = seqs_.at(seq_id);
    // Add checked that it can ever fit, so the only failure left is "not enough free blocks
    // now": the head waits, and so does everyone behind it.
    if (!blocks_.Reserve(seq_id, seq.max_total).ok()) return;
    waiting_.pop_front();
    running_.push_back(seq_id);
    seq.running = true;
  }
}

void Scheduler::PlanDecodes(StepPlan& plan) const {
  // Admission caps running sequences at max_batch_tokens, so these always fit the budget.
  for (int64_t seq_id : running_) {
    const Sequence& seq = seqs_.at(seq_id);
    if (seq.computed >= seq.prompt && seq.computed < seq.known) Append(plan, seq_id, seq, 1);
  }
}

void Scheduler::PlanPrefills(StepPlan& plan) const {
  for (int64_t seq_id : running_) {
    const int64_t budget = options_.max_batch_tokens - plan.tokens;
    if (budget == 0) return;
    const Sequence& seq = seqs_.at(seq_id);
    if (seq.computed < seq.prompt) {
      Append(plan, seq_id, seq, std::min(budget, seq.known - seq.computed));
    }
  }
}

void Scheduler::Append(StepPlan& plan, int64_t seq_id, const Sequence& seq, int64_t count) {
  ScheduledChunk chunk;
  chunk.seq_id = seq_id;
  chunk.start = seq.computed;
  chunk.count = count;
  chunk.samples = seq.computed + count == seq.known;
  plan.chunks.push_back(chunk);
  plan.tokens += count;
}

absl::Status Scheduler::Complete(const StepPlan& plan) {
  if (!pending_.has_value() || !(plan == *pending_)) {
    return absl::FailedPreconditionError(
        "scheduler: Complete needs the plan the last Schedule returned, once; this plan is "
        "stale or already completed");
  }
  for (const ScheduledChunk& chunk : plan.chunks) {
    // A sequence removed since Schedule is gone; an id added again since then is waiting, not
    // running (only Schedule admits), so a running sequence here is the one that was planned.
    auto it = seqs_.find(chunk.seq_id);
    if (it != seqs_.end() && it->second.running) it->second.computed += chunk.count;
  }
  pending_.reset();
  return absl::OkStatus();
}

absl::Status Scheduler::AppendToken(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  Sequence& seq = it->second;
  if (seq.computed < seq.known) {
    return absl::FailedPreconditionError(
        absl::StrCat("scheduler: sequence ", seq_id, " has computed ", seq.computed, " of its ",
                     seq.known, " known tokens; AppendToken needs all of them computed"));
  }
  if (seq.known == seq.max_total) {
    return absl::FailedPreconditionError(
        absl::StrCat("scheduler: sequence ", seq_id,
                     " already holds max_total_tokens=", seq.max_total, " known tokens"));
  }
  ++seq.known;
  return absl::OkStatus();
}

absl::Status Scheduler::Remove(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return UnknownSequence(seq_id);
  if (it->second.running) {
    EraseId(running_, seq_id);
  } else {
    EraseId(waiting_, seq_id);
  }
  seqs_.erase(it);
  return blocks_.Free(seq_id);
}

}  // namespace moe
