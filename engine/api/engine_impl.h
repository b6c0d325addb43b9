// Engine::Impl, the engine's state, shared by engine.cc (requests and the worker thread),
// engine_load.cc (Create's loading) and engine_forward.cc (Engine::Forward). Private to
// engine/api.
#ifndef MOE_ENGINE_API_ENGINE_IMPL_H_
#define MOE_ENGINE_API_ENGINE_IMPL_H_

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "engine/core/buffer.h"
#include "engine/model/model.h"
#include "engine/runtime/ep_step_runner.h"
#include "engine/runtime/generator.h"
#include "kernels/backend.h"

namespace moe {

// The engine's state. Everything under `mu` except the generator, model, backend and runner,
// which only the worker thread touches (and Validate, which is const).
struct Engine::Impl {
  // A token event for a request's callback. The pointer stays valid until the request is
  // marked done, which happens only after its callbacks have run (std::map nodes are stable).
  struct PendingCallback {
    const TokenCallback* callback;
    TokenEvent event;
  };
  // An Engine::Forward call, worked through by the worker one sequence at a time.
  struct ForwardJob {
    const ForwardRequest* request;
    std::vector<ForwardResult> results;
    size_t next = 0;  // sequences done
    absl::Status status;
    bool done = false;
  };
  struct Request {
    GenerationRequest request;
    TokenCallback on_token;
    GenerationResult result;
    absl::Status status;
    bool done = false;
  };

  ModelInfo info;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Allocator> allocator;
  std::unique_ptr<Model> model;
  // Expert parallel: the step runner; rank 0 has the generator (which steps through it), the
  // other ranks have no generator and serve_cache instead (ServeExpertParallel). One device:
  // the generator only.
  std::unique_ptr<EpStepRunner> runner;
  std::unique_ptr<Generator> generator;
  std::unique_ptr<KvCache> serve_cache;
  absl::Duration idle_interval;  // rank 0: an idle message after this long without work

  mutable std::mutex mu;
  std::condition_variable work_cv;  // the worker waits here for requests
  std::condition_variable done_cv;  // Await waits here
  std::map<RequestId, Request> requests;
  std::deque<RequestId> pending;    // submitted, not yet handed to the generator
  std::deque<RequestId> cancelled;  // Cancel called, not yet handled by the worker
  std::vector<RequestId> ending;   // finished by the worker, marked done after their callbacks
  std::deque<ForwardJob*> forward_jobs;  // Forward calls waiting for the worker (their callers)
  RequestId next_id = 1;
  bool stopping = false;
  EngineStats stats;
  bool count_expert_tokens = false;  // EngineOptions'
  absl::Status ep_status;  // rank 0: runner->status(), copied by the worker
  bool served = false;     // ServeExpertParallel was called
  std::thread worker;

  // Loads the model and builds the generator (or a serving rank's cache); no worker yet.
  static absl::StatusOr<std::unique_ptr<Impl>> Load(const std::string& model_dir,
                                                    const EngineOptions& options);
  // FailedPrecondition on a rank other than 0 of an expert-parallel engine.
  absl::Status CheckPlanningRank(absl::string_view op) const {
    if (generator != nullptr) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "engine: ", op, " on rank ", info.expert_parallel_rank, " of ", info.expert_parallel_size,
        ", which serves rank 0's steps (ServeExpertParallel); call it on rank 0"));
  }
  // Copies the runner's status for ExpertParallelStatus (worker thread, `mu` not held).
  void SyncEpStatus() {
    if (runner == nullptr) return;
    std::lock_guard<std::mutex> lock(mu);
    ep_status = runner->status();
  }

  SequenceRequest ToSequence(const GenerationRequest& r) const {
    SequenceRequest s;
    s.prompt = r.prompt;
    s.max_new_tokens = r.max_new_tokens;
    s.sampling.temperature = r.sampling.temperature;
    s.sampling.top_k = r.sampling.top_k;
    s.sampling.top_p = r.sampling.top_p;
    s.sampling.min_p = r.sampling.min_p;
    s.sampling.repetition_penalty = r.sampling.repetition_penalty;
    s.sampling.seed = r.sampling.seed;
    s.stop_ids = r.stop_token_ids;
    if (!r.ignore_eos) {
      s.stop_ids.insert(s.stop_ids.end(), info.eos_token_ids.begin(), info.eos_token_ids.end());
    }
    s.return_logprobs = r.return_logprobs;
    return s;
  }

  void Run();
  // Runs the sequences of `jobs` that fit in the free KV blocks now (worker thread, `mu` not
  // held); returns the jobs still waiting for blocks.
  std::deque<ForwardJob*> RunForwardJobs(std::deque<ForwardJob*> jobs);
  absl::Status ValidateForward(const ForwardRequest& request) const;
  // Validates and queues a request (`mu` held).
  absl::StatusOr<RequestId> SubmitLocked(GenerationRequest request, TokenCallback on_token);
  // Hands pending requests and cancellations to the generator (worker thread, `mu` held).
  void DrainQueues(std::vector<PendingCallback>* callbacks);
  // Applies one sequence event to its request (`mu` held); queues its callback.
  void Apply(const SequenceEvent& e, std::vector<PendingCallback>* callbacks);
  void Finish(RequestId id, FinishReason reason, absl::Status status);
  // Ends a request failed by a step (`mu` held): its status, and a last callback event carrying
  // it, so a streaming caller learns of the failure as of any other end.
  void Fail(RequestId id, const absl::Status& error, std::vector<PendingCallback>* callbacks);
};

}  // namespace moe

#endif  // MOE_ENGINE_API_ENGINE_IMPL_H_
