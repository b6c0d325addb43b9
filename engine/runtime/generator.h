// The generation loop of one model: sequences in, one step at a time, tokens out.
//
// Each Step asks the Scheduler for the step's work (decode tokens of running sequences and
// prefill chunks, continuous batching), builds the model batch (token ids, positions, slot
// mapping and block tables from the KV block manager), runs Model::Forward, samples one
// token for every sequence whose known tokens are now all computed (Backend::Sample with the
// sequence's parameters, step = tokens generated so far, so sampling is reproducible per
// sequence whatever else runs), and finishes sequences on a stop token or at max_new_tokens,
// freeing their KV blocks at once.
//
// Thread-compatible: one thread at a time (the Engine's worker thread). Validate is const and
// may run on any thread concurrently with Step.
#ifndef MOE_ENGINE_RUNTIME_GENERATOR_H_
#define MOE_ENGINE_RUNTIME_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/model/model.h"
#include "engine/runtime/ep_step_runner.h"
#include "engine/runtime/scheduler.h"
#include "kernels/backend.h"

namespace moe {

struct GeneratorOptions {
  int64_t max_batch_tokens = 2048;  // tokens per step, >= 1
  int64_t max_seqs = 64;            // running sequences, >= 1
  int64_t num_blocks = 0;           // KV cache blocks (expert parallel: per rank), >= 1
  int64_t block_size = 16;          // tokens per block, >= 1
  int64_t max_tokens_per_seq = 0;   // prompt + new tokens; 0 = max_position_embeddings
  // Test hook (EngineOptions::step_hook): runs before the model in every step with work; a
  // non-OK Status fails the step like a model error.
  std::function<absl::Status()> step_hook;
  // Expert parallel (rank 0's generator): every model step goes through this runner, which
  // runs it on all ranks in lockstep and gathers the logits here (ep_step_runner.h); the
  // sequence id is the owner key. Null: the model runs here alone. Must outlive the generator.
  EpStepRunner* expert_parallel = nullptr;
};

struct SequenceRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;        // step is set by the generator
  std::vector<int32_t> stop_ids;  // finish after emitting one of these
  bool return_logprobs = false;
};

enum class SequenceEnd { kNone, kLength, kStop, kCancelled };

// What a step did to one sequence: a new token (has_token), and/or its end.
struct SequenceEvent {
  int64_t seq_id = 0;
  bool has_token = false;
  int32_t token = 0;
  float logprob = 0.0f;
  int64_t index = 0;  // of the token among the generated ones
  SequenceEnd end = SequenceEnd::kNone;
};

// One step's outcome. On a failed step (`error` not OK: a backend or model error) the step's
// sequences are removed and listed in `failed`; the others are untouched and can go on.
struct StepOutcome {
  std::vector<SequenceEvent> events;
  absl::Status error;
  std::vector<int64_t> failed;
  int64_t prompt_tokens = 0;  // prefill tokens computed by the step
  int64_t tokens = 0;         // all tokens computed by the step
};

class Generator {
 public:
  // Allocates the KV cache (options.num_blocks blocks) and the sampling workspace.
  // InvalidArgument naming the option for a bad value; the allocator's ResourceExhausted.
  static absl::StatusOr<std::unique_ptr<Generator>> Create(Model* model, Backend* backend,
                                                           Allocator* allocator,
                                                           const GeneratorOptions& options);

  // Checks a request without queueing it: InvalidArgument naming the field and value for an
  // empty prompt, a token id outside [0, vocab_size), max_new_tokens < 1, a sampling parameter
  // out of range, or prompt + max_new_tokens over max_tokens_per_seq or over what the KV cache
  // can ever hold.
  absl::Status Validate(const SequenceRequest& request) const;

  // Validates and queues seq_id. AlreadyExists for a known id.
  absl::Status Add(int64_t seq_id, SequenceRequest request);

  // Ends seq_id now (waiting or running): its blocks are freed and the returned event has
  // end = kCancelled. NotFound for an unknown id.
  absl::StatusOr<SequenceEvent> Cancel(int64_t seq_id);

  // Runs one step. An empty outcome when there is nothing to run.
  StepOutcome Step();

  // Runs `tokens` as a prompt outside any request (the scoring / embedding call: nothing is
  // sampled or kept) in chunks of max_batch_tokens, and returns the last token's final-norm
  // hidden state (f32 [hidden_size], hidden = true) or logits (f32 [vocab_size]). Takes KV
  // blocks for it and frees them before returning. Unavailable when too few blocks are free
  // now (retry after a step frees some); the model's errors otherwise. Call between steps.
  absl::StatusOr<std::vector<float>> ForwardSequence(const std::vector<int32_t>& tokens,
                                                     bool hidden);

  bool HasWork() const { return !seqs_.empty(); }
  int64_t num_running() const { return scheduler_.num_running(); }
  int64_t num_waiting() const { return scheduler_.num_waiting(); }
  const KvBlockManager& blocks() const { return scheduler_.blocks(); }
  int64_t max_tokens_per_seq() const { return max_tokens_per_seq_; }

 private:
  struct Sequence {
    SequenceRequest request;
    std::vector<int32_t> tokens;  // prompt then generated
    int64_t generated = 0;
  };

  Generator(Model* model, Backend* backend, Scheduler scheduler, int64_t max_tokens_per_seq,
            int64_t max_batch_tokens, std::function<absl::Status()> step_hook,
            EpStepRunner* expert_parallel);

  // The model step over batch_ (through the runner when expert parallel); row_keys[s] is the
  // sequence id of block-table row s.
  absl::StatusOr<const float*> RunModel(absl::Span<const int64_t> row_keys);

  // Fills batch_ from the plan.
  absl::Status BuildBatch(const StepPlan& plan);
  // Samples the rows of the plan's sampling chunks and applies the tokens.
  absl::Status SampleAndApply(const StepPlan& plan, StepOutcome* outcome);

  Model* model_;
  Backend* backend_;
  Scheduler scheduler_;
  int64_t max_tokens_per_seq_;
  int64_t max_batch_tokens_;
  std::function<absl::Status()> step_hook_;
  EpStepRunner* expert_parallel_;

  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Buffer> sample_workspace_;
  size_t sample_workspace_bytes_ = 0;
  std::unique_ptr<Buffer> sampled_ids_;       // int32 [max_seqs], device
  std::unique_ptr<Buffer> sampled_logprobs_;  // f32 [max_seqs], device
  std::map<int64_t, Sequence> seqs_;          // ordered: reproducible iteration
  // Per-step staging, kept to avoid reallocating every step.
  ModelBatch batch_;
  const float* logits_ = nullptr;  // the step's logits on the device (Model-owned)
};

}  // namespace moe

#endif  // MOE_ENGINE_RUNTIME_GENERATOR_H_
