// moe::Engine: the C++ API for embedding the engine in a service or a batch job.
//
// An Engine loads one Hugging Face MoE checkpoint folder (config.json, model.safetensors or a
// sharded model-*-of-*.safetensors set with model.safetensors.index.json, optional
// generation_config.json) onto one backend, and generates tokens for requests with continuous
// batching: requests join the running batch between steps, prompt chunks (prefill) and single
// decode tokens share one step, and a finished request's KV cache blocks are freed at once.
//
// Example (examples/embed_engine.cc builds and runs in the test suite):
//
//   absl::StatusOr<std::unique_ptr<moe::Engine>> engine =
//       moe::Engine::Create("models/qwen3-moe-tiny", moe::EngineOptions{});
//   if (!engine.ok()) return engine.status();
//   moe::GenerationRequest request;
//   request.prompt = {12, 7, 99};
//   request.max_new_tokens = 16;
//   request.sampling.temperature = 0.8f;
//   request.sampling.seed = 42;
//   // Blocking: many requests in, one result (or error) per request out, in order.
//   std::vector<absl::StatusOr<moe::GenerationResult>> results = (*engine)->Generate({request});
//   // Asynchronous: tokens stream to the callback (on the engine's thread) as they are made.
//   absl::StatusOr<moe::RequestId> id = (*engine)->Submit(
//       request, [](const moe::TokenEvent& e) { std::cout << e.token << "\n"; });
//   absl::StatusOr<moe::GenerationResult> result = (*engine)->Await(*id);
//
// Memory: options.kv_cache_bytes bounds the paged KV cache. A request whose prompt plus
// max_new_tokens can never fit (in the cache, in the model's max positions or in
// max_tokens_per_seq) is rejected with InvalidArgument; one that cannot fit now waits in FIFO
// order until running requests finish. The KV blocks of a request are reserved for its prompt
// plus max_new_tokens when it is admitted, so an admitted request never stalls or is evicted.
//
// Determinism: sampling draws from a counter-based RNG seeded per request (seed, token index),
// kernels use no float atomics and fixed reduction orders, so the same requests given to an
// idle engine in one Generate call give the same tokens and log-prob bits run after run. The
// same request alone or inside other batches gives the same tokens (greedy, and sampled with
// the same seed, unless a probability sits within rounding of a sampling threshold), though not
// always the same logit bits: GEMM kernels may round differently for different batch sizes.
//
// Thread-safety: every method may be called from any thread, concurrently. Callbacks run on
// the engine's worker thread, one at a time, and must not block for long; they may call
// Submit, Cancel and Stats, but not Await, Generate or Shutdown (that would deadlock).
#ifndef MOE_ENGINE_API_ENGINE_H_
#define MOE_ENGINE_API_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

class Communicator;  // engine/dist/communicator.h

// Token sampling, Hugging Face's logits processors in HF's order (repetition penalty, then
// temperature, top-k, top-p, min-p). The default is greedy.
struct SamplingOptions {
  float temperature = 0.0f;         // >= 0; 0 = greedy (argmax, ties to the lowest id)
  int32_t top_k = 0;                // >= 0; 0 = off
  float top_p = 1.0f;               // in (0, 1]; 1 = off
  float min_p = 0.0f;               // in [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off; over the prompt and generated tokens
  uint64_t seed = 0;                // same seed + same request = same tokens
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, at least one, each in [0, vocab_size)
  int64_t max_new_tokens = 16;  // >= 1
  SamplingOptions sampling;
  // Generation stops after emitting any of these (the stop token is included in the output).
  // The model's eos_token_id(s) (generation_config.json, else config.json) are added unless
  // ignore_eos.
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool return_logprobs = false;  // log-prob of each chosen token under the sampled distribution
};

enum class FinishReason {
  kLength,     // max_new_tokens reached
  kStop,       // a stop token (or eos) was generated
  kCancelled,  // Cancel was called, or the engine shut down before the request finished
};

// "length", "stop", "cancelled".
const char* FinishReasonName(FinishReason reason);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens, prompt excluded
  std::vector<float> logprobs;  // one per token when return_logprobs, else empty
  FinishReason finish_reason = FinishReason::kLength;
  int64_t prompt_tokens = 0;
};

using RequestId = int64_t;

// One generated token, delivered to the Submit callback in order; the last event of a request
// has finished = true. A request ended by Cancel or Shutdown gets a last event without a
// token (token = -1, index = the number of tokens it got); so does one failed by an engine
// step (a backend error), whose last event then carries that error in `status` (Await returns
// it too).
struct TokenEvent {
  RequestId request_id = 0;
  int64_t index = 0;      // 0 for the first generated token
  int32_t token = 0;      // -1: no token (a cancelled request's last event)
  float logprob = 0.0f;   // 0 unless return_logprobs
  bool finished = false;  // the last event of the request; finish_reason is then set
  FinishReason finish_reason = FinishReason::kLength;
  absl::Status status;  // not OK only on the last event of a request failed by a step
};
using TokenCallback = std::function<void(const TokenEvent&)>;

// Engine::Forward: the scoring / embedding call.
enum class ForwardOutput {
  kHiddenState,  // the last token's final-norm hidden state (the lm_head's input), [hidden_size]
  kLogits,       // the last token's logits, [vocab_size]
  kTopLogprobs,  // the top_n entries of the last token's log-softmax
};

struct ForwardRequest {
  // Each at least one token, each token in [0, vocab_size), at most max_tokens_per_seq long.
  std::vector<std::vector<int32_t>> sequences;
  ForwardOutput output = ForwardOutput::kLogits;
  int64_t top_n = 0;  // kTopLogprobs: in [1, vocab_size]
};

// One sequence's output, f32.
struct ForwardResult {
  std::vector<float> values;        // kHiddenState, kLogits
  std::vector<int32_t> top_ids;     // kTopLogprobs: by descending log-prob, ties to the lower id
  std::vector<float> top_logprobs;  // log-softmax (computed in fp64) at top_ids
};

// Expert parallelism (docs/DESIGN.md, "Expert parallelism"): the model's routed experts are
// split over the ranks of `comm` (rank r loads and runs experts [r*E/P, (r+1)*E/P) and the
// replicated rest), launched as one process per rank (mpirun, with MpiCommunicator) or as one
// thread per rank (LocalCommunicatorGroup). Every rank calls Engine::Create with the same
// model folder and options (collective: a rank whose Create fails makes every rank's fail).
// Rank 0 is the engine the caller uses (Generate, Submit, Await, Forward, as on one device,
// with results bit-identical to one device); every other rank calls ServeExpertParallel, which
// runs rank 0's steps until rank 0's Shutdown.
struct EngineExpertParallel {
  // Null: one device (the default). Must outlive the engine; its thread rule (one thread at a
  // time) is kept by the engine: rank 0's worker thread makes every call after Create (with
  // MPI: MpiRuntime's MPI_THREAD_SERIALIZED), other ranks call on the ServeExpertParallel
  // thread. Its timeout bounds every wait, so a rank that dies or hangs ends the others' steps
  // with its DeadlineExceeded (naming the rank and the op) instead of a hang.
  Communicator* comm = nullptr;
  // The MoE layers' token exchange: kAuto takes the equal-split all-to-all exactly when every
  // rank sends every peer the same rows, kAlways pads to it, kNever always takes the variable
  // one. The same tokens and bits either way.
  enum class EqualSplit { kAuto, kAlways, kNever };
  EqualSplit equal_split = EqualSplit::kAuto;
};

// "auto", "always" or "never" (the launchers' flag values) into *mode; false for anything else.
bool ParseEqualSplit(const std::string& name, EngineExpertParallel::EqualSplit* mode);

struct EngineOptions {
  std::string backend = "cpu";  // "cpu"; "cuda" and "xpu" once built in
  // Run dtype: "f32", "bf16", or "auto" = the checkpoint's dtype (bf16 for bf16 / f16
  // checkpoints, else f32).
  std::string dtype = "auto";
  // ModelOptions::batch_invariant: a request's tokens and log-probs do not depend on what else
  // is batched with it, bit for bit (the CPU is so anyway; costs prefill speed on a GPU).
  bool batch_invariant = false;
  // ModelOptions::random_weights: weights drawn from random_seed instead of read from the
  // checkpoint (the folder needs only config.json); for benchmarks of real shapes.
  bool random_weights = false;
  uint64_t random_seed = 0;
  int64_t max_batch_tokens = 2048;  // tokens per step (prefill chunks + decode tokens), >= 1
  int64_t max_seqs = 64;            // sequences per step, >= 1
  int64_t kv_cache_bytes = int64_t{1} << 30;  // budget for the paged KV cache, all layers
  int64_t block_size = 16;                    // tokens per KV cache block, >= 1
  // Longest prompt + max_new_tokens one request may have; 0 = the model's
  // max_position_embeddings.
  int64_t max_tokens_per_seq = 0;
  int threads = 0;  // CPU threads; 0 = the OpenMP default
  // Called while Create loads the weights with (steps done, total steps): the embedding and
  // lm_head, then each layer. On the calling thread; may be empty.
  std::function<void(int64_t, int64_t)> on_load_progress;
  // Test hook, empty in production: called on the worker thread in every step that has work,
  // before the model runs. A non-OK Status fails that step's requests as a backend error would
  // (their last event and Await carry it; the engine goes on with later requests). It may also
  // sleep, to make steps slow.
  std::function<absl::Status()> step_hook;
  // Copy the per-layer expert token counts into Stats().expert_tokens after every step (a
  // [layers][experts] copy per step; moe_server turns it on with its metrics endpoint).
  bool count_expert_tokens = false;
  // Null comm: one device.
  EngineExpertParallel expert_parallel;
};

// What an embedder needs to know about the loaded model.
struct ModelInfo {
  std::string model_dir;
  std::string family;   // config.json model_type: "mixtral", "qwen3_moe", "qwen2_moe", ...
  std::string backend;  // EngineOptions::backend
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_experts = 0;        // routed experts per MoE layer
  int64_t experts_per_token = 0;  // the router's top-k
  int64_t max_position_embeddings = 0;
  int64_t max_tokens_per_seq = 0;  // the limit on prompt + max_new_tokens (option or model's)
  int64_t max_batch_tokens = 0;    // EngineOptions'
  int64_t max_seqs = 0;            // EngineOptions'
  std::vector<int32_t> eos_token_ids;
  std::string dtype;  // the run dtype
  int64_t weight_bytes = 0;
  int64_t kv_cache_blocks = 0;  // this process's cache (expert parallel: per rank)
  int64_t block_size = 0;
  int expert_parallel_rank = 0;  // this engine's rank; 0 on one device
  int expert_parallel_size = 1;  // ranks the experts are split over; 1 on one device
};

struct EngineStats {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;     // prefilled so far
  int64_t generated_tokens = 0;  // sampled so far
  int64_t running = 0;           // admitted, not finished
  int64_t waiting = 0;           // submitted, not admitted (KV cache full)
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  // With EngineOptions::count_expert_tokens: rows routed to each expert of each layer so far
  // (a token counts once for each of its top-k experts), [num_layers][num_experts], empty for
  // dense layers; else empty. Counted where the counts reach the host anyway: every CPU step;
  // on a GPU only steps of more than 64 tokens (decode-sized steps keep the counts on the device
  // so that they never wait for the routing, and are not counted). Expert parallel: every
  // rank's tokens, every step (from the MoE layers' counts all-gather).
  std::vector<std::vector<int64_t>> expert_tokens;
};

class Engine {
 public:
  // Loads the model folder. NotFound / InvalidArgument / Unimplemented naming the file, tensor,
  // field or option for a missing or corrupt checkpoint, an unsupported config, a bad option or
  // a backend that is not available; ResourceExhausted if the KV budget holds no block.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const std::string& model_dir,
                                                        const EngineOptions& options);
  ~Engine();  // Shutdown()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs all requests to completion (queued together, sharing steps with any submitted ones)
  // and returns one entry per request, in order: the result, or the error of a request that
  // was rejected (InvalidArgument naming the request index and field) without affecting the
  // others.
  std::vector<absl::StatusOr<GenerationResult>> Generate(
      const std::vector<GenerationRequest>& requests);

  // Queues a request and returns its id at once. InvalidArgument (naming the field) if the
  // request is invalid or can never fit; FailedPrecondition after Shutdown. `on_token`, if
  // set, gets every token as it is generated.
  absl::StatusOr<RequestId> Submit(GenerationRequest request, TokenCallback on_token = nullptr);

  // Submit for many requests at once, one entry per request (its id, or Submit's error for
  // it). They enter under one lock, so the worker sees them together: an idle engine then
  // runs the same steps for the same batch every time, and so gives the same bits (one by one,
  // the first steps would hold however many had arrived). `on_token` is shared by all.
  std::vector<absl::StatusOr<RequestId>> SubmitBatch(std::vector<GenerationRequest> requests,
                                                     const TokenCallback& on_token = nullptr);

  // Stops a request: it finishes with kCancelled after the current step (its tokens so far
  // are kept). NotFound for an unknown or already awaited id; OK if it already finished.
  absl::Status Cancel(RequestId id);

  // Blocks until the request finishes and returns its result (once: the id is then
  // forgotten). NotFound for an unknown or already awaited id. An internal error of a step
  // (a backend failure) is returned here for every request of that step.
  absl::StatusOr<GenerationResult> Await(RequestId id);

  // Runs every sequence as a prompt and returns its last token's output (one result per
  // sequence, in order); nothing is generated and nothing stays in the KV cache. Runs on the
  // worker between generation steps, one sequence at a time in its own model forward (prefill
  // chunks of max_batch_tokens), so a sequence's result is the same whatever else runs; it
  // waits while the KV cache has too few free blocks for a sequence. InvalidArgument naming
  // sequences[i] and the limit for a bad request (checked before anything runs);
  // FailedPrecondition after Shutdown; a backend error of the forward. Blocks the caller.
  absl::StatusOr<std::vector<ForwardResult>> Forward(const ForwardRequest& request);

  // Cancels everything not finished, stops the worker thread and waits for it. Idempotent.
  // Expert parallel, rank 0: then ends the other ranks' ServeExpertParallel (unless the group
  // already failed; ExpertParallelStatus says so).
  void Shutdown();

  // Expert parallel, ranks other than 0: runs rank 0's steps on the calling thread until rank
  // 0's Shutdown, then returns OK; else the first error, naming this rank and the op (rank 0
  // dead or hung: the communicator's DeadlineExceeded). Call once, on one thread; the other
  // methods of such an engine are FailedPrecondition (Submit, Forward; Generate's entries),
  // NotFound (Cancel, Await) or no-ops (Shutdown). FailedPrecondition on rank 0, on one
  // device, and on a second call.
  absl::Status ServeExpertParallel();

  // Expert parallel, rank 0: OK, or the first error of a step, an idle message or the stop that
  // reached the other ranks (the communicator's DeadlineExceeded naming the rank and op, a
  // model error mid-step). Such an error leaves the ranks out of lockstep: that step's requests
  // and every later one fail with it (FailedPrecondition), and Shutdown does not reach the
  // others. Always OK on one device and on other ranks.
  absl::Status ExpertParallelStatus() const;

  const ModelInfo& model_info() const;
  EngineStats Stats() const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe

#endif  // MOE_ENGINE_API_ENGINE_H_
