#include "engine/runtime/generator.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

absl::StatusOr<std::unique_ptr<Generator>> Generator::Create(Model* model, Backend* backend,
                                                             Allocator* allocator,
                                                             const GeneratorOptions& options) {
  const int64_t max_positions = model->config().max_position_embeddings;
  const int64_t max_tokens =
      options.max_tokens_per_seq == 0 ? max_positions : options.max_tokens_per_seq;
  if (max_tokens < 1 || max_tokens > max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generator: max_tokens_per_seq=", options.max_tokens_per_seq,
        " is outside [1, max_position_embeddings=", max_positions, "] (0 = that limit)"));
  }
  if (options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("generator: block_size=", options.block_size, " must be >= 1"));
  }
  SchedulerOptions so;
  so.max_batch_tokens = options.max_batch_tokens;
  so.max_seqs = options.max_seqs;
  so.num_blocks = options.num_blocks;
  so.block_size = options.block_size;
  if (options.expert_parallel != nullptr) {
    // Every rank's cache holds num_blocks blocks of its own sequences: one pool per rank, a
    // sequence in its owner's.
    const int ranks = options.expert_parallel->ranks();
    so.num_blocks = options.num_blocks * ranks;
    so.partitions = EpStepRunner::KvPools(ranks);
  }
  so.max_blocks_per_seq = (max_tokens + options.block_size - 1) / options.block_size;
  MOE_ASSIGN_OR_RETURN(Scheduler scheduler, Scheduler::Create(so));
  std::unique_ptr<Generator> g(new Generator(model, backend, std::move(scheduler), max_tokens,
                                             options.max_batch_tokens, options.step_hook,
                                             options.expert_parallel));
  MOE_ASSIGN_OR_RETURN(g->cache_, model->AllocateKvCache(options.num_blocks, options.block_size));
  // At most one sampled row per running sequence per step.
  g->sample_workspace_bytes_ =
      backend->SampleWorkspaceBytes(options.max_seqs, model->config().vocab_size);
  MOE_ASSIGN_OR_RETURN(g->sample_workspace_,
                       allocator->Allocate(std::max<size_t>(g->sample_workspace_bytes_, 1)));
  // Sample's outputs on the device, read back once per step.
  MOE_ASSIGN_OR_RETURN(g->sampled_ids_, allocator->Allocate(options.max_seqs * sizeof(int32_t)));
  MOE_ASSIGN_OR_RETURN(g->sampled_logprobs_, allocator->Allocate(options.max_seqs * sizeof(float)));
  return g;
}

Generator::Generator(Model* model, Backend* backend, Scheduler scheduler,
                     int64_t max_tokens_per_seq, int64_t max_batch_tokens,
                     std::function<absl::Status()> step_hook, EpStepRunner* expert_parallel)
    : model_(model),
      backend_(backend),
      scheduler_(std::move(scheduler)),
      max_tokens_per_seq_(max_tokens_per_seq),
      max_batch_tokens_(max_batch_tokens),
      step_hook_(std::move(step_hook)),
      expert_parallel_(expert_parallel) {}

absl::StatusOr<const float*> Generator::RunModel(absl::Span<const int64_t> row_keys) {
  if (expert_parallel_ != nullptr) return expert_parallel_->Forward(batch_, row_keys, *cache_);
  return model_->ForwardOnDevice(batch_, *cache_);
}

absl::Status Generator::Validate(const SequenceRequest& r) const {
  const int64_t vocab = model_->config().vocab_size;
  if (r.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt[", i, "]=", r.prompt[i], " is outside [0, vocab_size=", vocab, ")"));
    }
  }
  if (r.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens=", r.max_new_tokens, " must be >= 1"));
  }
  const int64_t prompt = static_cast<int64_t>(r.prompt.size());
  if (r.max_new_tokens > max_tokens_per_seq_ - prompt) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt, " tokens) + max_new_tokens (", r.max_new_tokens,
                     ") exceeds max_tokens_per_seq=", max_tokens_per_seq_));
  }
  if (!scheduler_.blocks().CanEverFit(prompt + r.max_new_tokens)) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt, " tokens) + max_new_tokens (", r.max_new_tokens,
                     ") can never fit in the KV cache of ", scheduler_.blocks().num_blocks(),
                     " blocks of ", scheduler_.blocks().block_size(), " tokens"));
  }
  MOE_RETURN_IF_ERROR(CheckSamplingParams(r.sampling, "sampling"));
  for (size_t i = 0; i < r.stop_ids.size(); ++i) {
    if (r.stop_ids[i] < 0 || r.stop_ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "]=", r.stop_ids[i],
                                                     " is outside [0, vocab_size=", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Generator::Add(int64_t seq_id, SequenceRequest request) {
  if (seqs_.count(seq_id) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already exists"));
  }
  MOE_RETURN_IF_ERROR(Validate(request));
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  MOE_RETURN_IF_ERROR(scheduler_.Add(seq_id, prompt, prompt + request.max_new_tokens));
  Sequence seq;
  seq.tokens = request.prompt;
  seq.tokens.reserve(prompt + request.max_new_tokens);
  seq.request = std::move(request);
  seqs_.emplace(seq_id, std::move(seq));
  return absl::OkStatus();
}

absl::StatusOr<SequenceEvent> Generator::Cancel(int64_t seq_id) {
  if (seqs_.count(seq_id) == 0) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " is not running or waiting"));
  }
  MOE_RETURN_IF_ERROR(scheduler_.Remove(seq_id));
  seqs_.erase(seq_id);
  SequenceEvent e;
  e.seq_id = seq_id;
  e.end = SequenceEnd::kCancelled;
  return e;
}

absl::Status Generator::BuildBatch(const StepPlan& plan) {
  ModelBatch& b = batch_;
  b.token_ids.clear();
  b.positions.clear();
  b.seq_ids.clear();
  b.slot_mapping.clear();
  b.logit_rows.clear();
  b.hidden_states = false;  // ForwardSequence may have set it
  const KvBlockManager& blocks = scheduler_.blocks();
  int64_t max_blocks = 1;
  for (const ScheduledChunk& c : plan.chunks) {
    MOE_ASSIGN_OR_RETURN(int64_t reserved, blocks.ReservedTokens(c.seq_id));
    max_blocks = std::max(max_blocks, blocks.BlocksForTokens(reserved));
  }
  b.num_seqs = static_cast<int64_t>(plan.chunks.size());
  b.max_blocks_per_seq = max_blocks;
  b.block_tables.assign(static_cast<size_t>(b.num_seqs * max_blocks), -1);
  for (size_t row = 0; row < plan.chunks.size(); ++row) {
    const ScheduledChunk& c = plan.chunks[row];
    const Sequence& seq = seqs_.at(c.seq_id);
    const size_t first = b.token_ids.size();
    b.slot_mapping.resize(first + c.count);
    MOE_RETURN_IF_ERROR(
        blocks.FillSlotMapping(c.seq_id, c.start, c.count, b.slot_mapping.data() + first));
    MOE_RETURN_IF_ERROR(
        blocks.FillBlockTableRow(c.seq_id, b.block_tables.data() + row * max_blocks, max_blocks));
    for (int64_t i = 0; i < c.count; ++i) {
      b.token_ids.push_back(seq.tokens[c.start + i]);
      b.positions.push_back(static_cast<int32_t>(c.start + i));
      b.seq_ids.push_back(static_cast<int32_t>(row));
    }
    if (c.samples) b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size() - 1));
  }
  return absl::OkStatus();
}

absl::Status Generator::SampleAndApply(const StepPlan& plan, StepOutcome* outcome) {
  std::vector<int64_t> sampled;  // seq ids of the logit rows, in order
  std::vector<SamplingParams> params;
  std::vector<int64_t> seen_offsets = {0};
  std::vector<int32_t> seen;
  bool any_penalty = false;
  for (const ScheduledChunk& c : plan.chunks) {
    if (!c.samples) continue;
    const Sequence& seq = seqs_.at(c.seq_id);
    sampled.push_back(c.seq_id);
    SamplingParams p = seq.request.sampling;
    p.step = static_cast<uint64_t>(seq.generated);
    params.push_back(p);
    // HF's repetition penalty looks at every token of input_ids: prompt and generated.
    if (p.repetition_penalty != 1.0f) {
      any_penalty = true;
      seen.insert(seen.end(), seq.tokens.begin(), seq.tokens.end());
    }
    seen_offsets.push_back(static_cast<int64_t>(seen.size()));
  }
  const int64_t rows = static_cast<int64_t>(sampled.size());
  if (rows == 0) return absl::OkStatus();
  std::vector<int32_t> ids(rows);
  std::vector<float> logprobs(rows);
  SampleArgs args;
  args.rows = rows;
  args.vocab = model_->config().vocab_size;
  args.logits = logits_;
  args.ld = args.vocab;
  args.params = params.data();
  args.seen_offsets = any_penalty ? seen_offsets.data() : nullptr;
  args.seen_ids = any_penalty ? seen.data() : nullptr;
  args.ids = static_cast<int32_t*>(sampled_ids_->data());
  args.logprobs = static_cast<float*>(sampled_logprobs_->data());
  args.workspace = sample_workspace_->data();
  args.workspace_bytes = sample_workspace_bytes_;
  MOE_RETURN_IF_ERROR(backend_->Sample(args));
  MOE_RETURN_IF_ERROR(backend_->CopyToHost(ids.data(), args.ids, rows * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(backend_->CopyToHost(logprobs.data(), args.logprobs, rows * sizeof(float)));

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t id = sampled[r];
    Sequence& seq = seqs_.at(id);
    SequenceEvent e;
    e.seq_id = id;
    e.has_token = true;
    e.token = ids[r];
    e.logprob = seq.request.return_logprobs ? logprobs[r] : 0.0f;
    e.index = seq.generated;
    seq.tokens.push_back(ids[r]);
    ++seq.generated;
    const std::vector<int32_t>& stops = seq.request.stop_ids;
    if (std::find(stops.begin(), stops.end(), ids[r]) != stops.end()) {
      e.end = SequenceEnd::kStop;
    } else if (seq.generated >= seq.request.max_new_tokens) {
      e.end = SequenceEnd::kLength;
    }
    if (e.end == SequenceEnd::kNone) {
      MOE_RETURN_IF_ERROR(scheduler_.AppendToken(id));
    } else {
      MOE_RETURN_IF_ERROR(scheduler_.Remove(id));
      seqs_.erase(id);
    }
    outcome->events.push_back(e);
  }
  return absl::OkStatus();
}

StepOutcome Generator::Step() {
  StepOutcome outcome;
  const StepPlan plan = scheduler_.Schedule();
  if (plan.empty()) return outcome;
  for (const ScheduledChunk& c : plan.chunks) {
    const Sequence& seq = seqs_.at(c.seq_id);
    const int64_t prompt = static_cast<int64_t>(seq.request.prompt.size());
    outcome.prompt_tokens += std::max<int64_t>(0, std::min(c.start + c.count, prompt) - c.start);
  }
  outcome.tokens = plan.tokens;
  absl::Status status = BuildBatch(plan);
  if (status.ok() && step_hook_) status = step_hook_();
  if (status.ok()) {
    std::vector<int64_t> row_keys;
    for (const ScheduledChunk& c : plan.chunks) row_keys.push_back(c.seq_id);
    absl::StatusOr<const float*> logits = RunModel(row_keys);
    status = logits.status();
    if (status.ok()) logits_ = *logits;
  }
  if (status.ok()) status = scheduler_.Complete(plan);
  if (status.ok()) status = SampleAndApply(plan, &outcome);
  if (!status.ok()) {
    // The step's sequences cannot go on (their cache may be half written): drop those still
    // here. Events already made (sequences that finished before the error) stand.
    outcome.error = status;
    for (const ScheduledChunk& c : plan.chunks) {
      if (seqs_.count(c.seq_id) == 0) continue;
      scheduler_.Remove(c.seq_id).IgnoreError();
      seqs_.erase(c.seq_id);
      outcome.failed.push_back(c.seq_id);
    }
  }
  return outcome;
}

absl::StatusOr<std::vector<float>> Generator::ForwardSequence(const std::vector<int32_t>& tokens,
                                                              bool hidden) {
  // Below every request id (they start at 1), so it never meets one.
  constexpr int64_t kForwardSeq = -1;
  const int64_t n = static_cast<int64_t>(tokens.size());
  KvBlockManager& blocks = scheduler_.mutable_blocks();
  if (blocks.BlocksForTokens(n) > blocks.blocks_free()) {
    return absl::UnavailableError(absl::StrCat("forward: ", n, " tokens need ",
                                               blocks.BlocksForTokens(n), " KV blocks, ",
                                               blocks.blocks_free(), " free now"));
  }
  MOE_RETURN_IF_ERROR(blocks.AddSequence(kForwardSeq));
  absl::StatusOr<std::vector<float>> out = [&]() -> absl::StatusOr<std::vector<float>> {
    MOE_RETURN_IF_ERROR(blocks.Reserve(kForwardSeq, n));
    ModelBatch& b = batch_;
    b.num_seqs = 1;
    b.max_blocks_per_seq = blocks.BlocksForTokens(n);
    b.block_tables.assign(static_cast<size_t>(b.max_blocks_per_seq), -1);
    MOE_RETURN_IF_ERROR(
        blocks.FillBlockTableRow(kForwardSeq, b.block_tables.data(), b.max_blocks_per_seq));
    b.hidden_states = hidden;
    std::vector<float> result;
    // Chunked like a prefill: the step's workspaces stay within max_batch_tokens.
    for (int64_t start = 0; start < n; start += max_batch_tokens_) {
      const int64_t count = std::min(max_batch_tokens_, n - start);
      b.token_ids.assign(tokens.begin() + start, tokens.begin() + start + count);
      b.positions.resize(count);
      for (int64_t i = 0; i < count; ++i) b.positions[i] = static_cast<int32_t>(start + i);
      b.seq_ids.assign(count, 0);
      b.slot_mapping.resize(count);
      MOE_RETURN_IF_ERROR(blocks.FillSlotMapping(kForwardSeq, start, count, b.slot_mapping.data()));
      b.logit_rows.clear();
      if (start + count == n) b.logit_rows.push_back(static_cast<int32_t>(count - 1));
      MOE_ASSIGN_OR_RETURN(const float* rows, RunModel({kForwardSeq}));
      if (rows != nullptr) {
        result.resize(hidden ? model_->config().hidden_size : model_->config().vocab_size);
        MOE_RETURN_IF_ERROR(
            backend_->CopyToHost(result.data(), rows, result.size() * sizeof(float)));
      }
    }
    return result;
  }();
  blocks.Free(kForwardSeq).IgnoreError();
  return out;
}

}  // namespace moe
