#include "engine/api/engine.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/api/expert_parallel_setup.h"
#include "engine/core/buffer.h"
#include "engine/dist/communicator.h"
#include "engine/model/generation_config.h"
#include "engine/model/model.h"
#include "engine/runtime/ep_step_runner.h"
#include "engine/runtime/generator.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"

namespace moe {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

namespace {

absl::StatusOr<Device> ParseBackend(const std::string& name) {
  if (name == "cpu") return Device::Cpu();
  if (name == "cuda") return Device::Cuda(0);
  if (name == "xpu") return Device::Xpu(0);
  return absl::InvalidArgumentError(
      absl::StrCat("option backend=\"", name, "\" is not one of cpu, cuda, xpu"));
}

absl::StatusOr<DType> ParseDType(const std::string& name, const ModelConfig& config) {
  if (name == "f32") return DType::kF32;
  if (name == "bf16") return DType::kBF16;
  if (name == "auto") {
    const bool half = config.has_dtype &&
                      (config.dtype == DType::kBF16 || config.dtype == DType::kF16);
    return half ? DType::kBF16 : DType::kF32;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("option dtype=\"", name, "\" is not one of auto, f32, bf16"));
}

absl::Status CheckOptions(const EngineOptions& o) {
  const auto positive = [](const char* name, int64_t v) {
    return v >= 1 ? absl::OkStatus()
                  : absl::InvalidArgumentError(absl::StrCat("option ", name, "=", v,
                                                            " must be >= 1"));
  };
  MOE_RETURN_IF_ERROR(positive("max_batch_tokens", o.max_batch_tokens));
  MOE_RETURN_IF_ERROR(positive("max_seqs", o.max_seqs));
  MOE_RETURN_IF_ERROR(positive("kv_cache_bytes", o.kv_cache_bytes));
  MOE_RETURN_IF_ERROR(positive("block_size", o.block_size));
  if (o.max_tokens_per_seq < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "option max_tokens_per_seq=", o.max_tokens_per_seq, " must be >= 0 (0 = the model's)"));
  }
  if (o.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("option threads=", o.threads, " must be >= 0 (0 = all cores)"));
  }
  return absl::OkStatus();
}

}  // namespace

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

void Engine::Impl::Fail(RequestId id, const absl::Status& error,
                        std::vector<PendingCallback>* callbacks) {
  auto it = requests.find(id);
  if (it == requests.end()) return;
  Request& r = it->second;
  r.status = absl::Status(error.code(),
                          absl::StrCat("request ", id, ": step failed: ", error.message()));
  r.result.finish_reason = FinishReason::kCancelled;
  ending.push_back(id);
  if (!r.on_token) return;
  TokenEvent te;
  te.request_id = id;
  te.index = static_cast<int64_t>(r.result.tokens.size());
  te.token = -1;
  te.finished = true;
  te.finish_reason = FinishReason::kCancelled;
  te.status = r.status;
  callbacks->push_back({&r.on_token, te});
}

void Engine::Impl::Finish(RequestId id, FinishReason reason, absl::Status status) {
  Request& r = requests.at(id);
  r.result.finish_reason = reason;
  r.status = std::move(status);
  r.done = true;
}

void Engine::Impl::Apply(const SequenceEvent& e,
                         std::vector<PendingCallback>* callbacks) {
  auto it = requests.find(e.seq_id);
  if (it == requests.end()) return;
  Request& r = it->second;
  TokenEvent te;
  te.request_id = e.seq_id;
  te.index = static_cast<int64_t>(r.result.tokens.size());
  te.token = -1;
  if (e.has_token) {
    te.token = e.token;
    te.logprob = e.logprob;
    r.result.tokens.push_back(e.token);
    if (r.request.return_logprobs) r.result.logprobs.push_back(e.logprob);
    ++stats.generated_tokens;
  }
  if (e.end != SequenceEnd::kNone) {
    te.finished = true;
    te.finish_reason = e.end == SequenceEnd::kStop     ? FinishReason::kStop
                       : e.end == SequenceEnd::kLength ? FinishReason::kLength
                                                       : FinishReason::kCancelled;
    r.result.finish_reason = te.finish_reason;
    ending.push_back(e.seq_id);
  }
  if (r.on_token && (e.has_token || te.finished)) callbacks->push_back({&r.on_token, te});
}

void Engine::Impl::DrainQueues(std::vector<PendingCallback>* callbacks) {
  while (!pending.empty()) {
    const RequestId id = pending.front();
    pending.pop_front();
    Request& r = requests.at(id);
    // Validated at Submit; Add can still refuse (an internal inconsistency): fail the request.
    absl::Status s = generator->Add(id, ToSequence(r.request));
    if (!s.ok()) Finish(id, FinishReason::kCancelled, std::move(s));
  }
  while (!cancelled.empty()) {
    const RequestId id = cancelled.front();
    cancelled.pop_front();
    absl::StatusOr<SequenceEvent> e = generator->Cancel(id);
    if (!e.ok()) continue;  // finished in the meantime
    Apply(*e, callbacks);
  }
}

void Engine::Impl::Run() {
  std::vector<PendingCallback> callbacks;
  while (true) {
    callbacks.clear();
    bool stopped = false;
    bool idle = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      const auto has_work = [&] {
        return stopping || !pending.empty() || !cancelled.empty() || !forward_jobs.empty() ||
               generator->HasWork();
      };
      if (runner == nullptr) {
        work_cv.wait(lock, has_work);
      } else {
        idle = !work_cv.wait_for(lock, absl::ToChronoMilliseconds(idle_interval), has_work);
      }
      if (idle) {
        // Below: the other ranks hear that rank 0 is alive.
      } else if (stopping) {
        // Cancel everything still here; the results keep their tokens so far.
        for (auto& [id, r] : requests) {
          if (r.done) continue;
          generator->Cancel(id).IgnoreError();  // NotFound if it was still pending
          SequenceEvent e;
          e.seq_id = id;
          e.end = SequenceEnd::kCancelled;
          Apply(e, &callbacks);
        }
        pending.clear();
        cancelled.clear();
        for (ForwardJob* job : forward_jobs) {
          job->status = absl::FailedPreconditionError("the engine shut down during Forward");
          job->done = true;
        }
        forward_jobs.clear();
        stopped = true;
      } else {
        DrainQueues(&callbacks);
      }
    }
    if (idle) {
      runner->Idle().IgnoreError();  // kept in runner->status()
      SyncEpStatus();
      continue;
    }
    if (stopped) {
      for (auto& [callback, event] : callbacks) (*callback)(event);
      {
        std::lock_guard<std::mutex> lock(mu);
        for (const RequestId id : ending) requests.at(id).done = true;
        ending.clear();
        done_cv.notify_all();
      }
      if (runner != nullptr) {
        runner->Stop().IgnoreError();  // kept in runner->status()
        SyncEpStatus();
      }
      return;
    }
    // Forward calls run between steps, without the lock; those that wait for KV blocks go
    // back to the front of the queue and try again after the step.
    std::deque<ForwardJob*> jobs;
    {
      std::lock_guard<std::mutex> lock(mu);
      jobs.swap(forward_jobs);
    }
    if (!jobs.empty()) {
      std::deque<ForwardJob*> waiting = RunForwardJobs(std::move(jobs));
      std::lock_guard<std::mutex> lock(mu);
      forward_jobs.insert(forward_jobs.begin(), waiting.begin(), waiting.end());
      // Before the jobs' callers wake: Stats after a Forward returns includes its rows.
      if (count_expert_tokens) stats.expert_tokens = model->expert_tokens();
      done_cv.notify_all();
    }
    // The step runs without the lock: Submit, Cancel and Stats stay responsive.
    StepOutcome outcome = generator->Step();
    SyncEpStatus();
    {
      std::lock_guard<std::mutex> lock(mu);
      if (outcome.tokens > 0) ++stats.steps;
      stats.prompt_tokens += outcome.prompt_tokens;
      for (const SequenceEvent& e : outcome.events) Apply(e, &callbacks);
      for (const int64_t id : outcome.failed) Fail(id, outcome.error, &callbacks);
      stats.running = generator->num_running();
      stats.waiting = generator->num_waiting() + static_cast<int64_t>(pending.size());
      stats.kv_blocks_used = generator->blocks().blocks_used();
      // After the Forward jobs too: their model runs count as well.
      if (count_expert_tokens) stats.expert_tokens = model->expert_tokens();
    }
    // Callbacks run without the lock (they may Submit or Cancel), before the requests they
    // finish are marked done, so Await returns only after a request's last callback.
    for (auto& [callback, event] : callbacks) (*callback)(event);
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const RequestId id : ending) requests.at(id).done = true;
      ending.clear();
      done_cv.notify_all();
    }
  }
}

namespace {

// The top_n entries of log_softmax(logits), computed in fp64: descending, ties to the lower id.
void TopLogprobs(const std::vector<float>& logits, int64_t top_n, ForwardResult* out) {
  double max = logits[0];
  for (const float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0;
  for (const float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_z = max + std::log(sum);
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::partial_sort(ids.begin(), ids.begin() + top_n, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  for (int64_t i = 0; i < top_n; ++i) {
    out->top_ids.push_back(ids[i]);
    out->top_logprobs.push_back(static_cast<float>(logits[ids[i]] - log_z));
  }
}

}  // namespace

std::deque<Engine::Impl::ForwardJob*> Engine::Impl::RunForwardJobs(std::deque<ForwardJob*> jobs) {
  std::deque<ForwardJob*> waiting;
  for (ForwardJob* job : jobs) {
    const ForwardRequest& r = *job->request;
    while (job->next < r.sequences.size()) {
      absl::StatusOr<std::vector<float>> out = generator->ForwardSequence(
          r.sequences[job->next], r.output == ForwardOutput::kHiddenState);
      if (absl::IsUnavailable(out.status())) break;  // too few free blocks now
      if (!out.ok()) {
        job->status = absl::Status(out.status().code(),
                                   absl::StrCat("sequences[", job->next, "]: forward failed: ",
                                                out.status().message()));
        break;
      }
      ForwardResult& result = job->results[job->next++];
      if (r.output == ForwardOutput::kTopLogprobs) {
        TopLogprobs(*out, r.top_n, &result);
      } else {
        result.values = *std::move(out);
      }
    }
    if (job->next == r.sequences.size() || !job->status.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      job->done = true;
    } else {
      waiting.push_back(job);
    }
  }
  return waiting;
}

absl::Status Engine::Impl::ValidateForward(const ForwardRequest& r) const {
  const int64_t vocab = info.vocab_size;
  if (r.sequences.empty()) return absl::InvalidArgumentError("sequences is empty");
  if (r.output == ForwardOutput::kTopLogprobs && (r.top_n < 1 || r.top_n > vocab)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_n=", r.top_n, " is outside [1, vocab_size=", vocab, "]"));
  }
  for (size_t i = 0; i < r.sequences.size(); ++i) {
    const std::vector<int32_t>& s = r.sequences[i];
    if (s.empty()) return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "] is empty"));
    const int64_t n = static_cast<int64_t>(s.size());
    if (n > info.max_tokens_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "] has ", n,
                                                     " tokens, over max_tokens_per_seq=",
                                                     info.max_tokens_per_seq));
    }
    if (!generator->blocks().CanEverFit(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", i, "] has ", n, " tokens, more than the KV cache of ",
                       info.kv_cache_blocks, " blocks of ", info.block_size, " tokens holds"));
    }
    for (size_t j = 0; j < s.size(); ++j) {
      if (s[j] < 0 || s[j] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "][", j, "]=", s[j],
                                                       " is outside [0, vocab_size=", vocab, ")"));
      }
    }
  }
  return absl::OkStatus();
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Engine::Impl>> Engine::Impl::Load(const std::string& model_dir,
                                                                 const EngineOptions& options) {
  MOE_RETURN_IF_ERROR(CheckOptions(options));
  MOE_ASSIGN_OR_RETURN(Device device, ParseBackend(options.backend));
  auto impl = std::make_unique<Impl>();
  MOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MOE_ASSIGN_OR_RETURN(DType dtype, ParseDType(options.dtype, config));
  BackendOptions backend_options;
  backend_options.cpu_threads = options.threads;
  MOE_ASSIGN_OR_RETURN(impl->backend, CreateBackend(device, backend_options));
  impl->allocator = std::make_unique<Allocator>(impl->backend.get());
  ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.on_load_progress = options.on_load_progress;
  Communicator* const comm = options.expert_parallel.comm;
  model_options.expert_parallel = {comm, ToEqualSplitMode(options.expert_parallel.equal_split)};
  MOE_ASSIGN_OR_RETURN(impl->model, Model::Load(model_dir, model_options, impl->backend.get(),
                                                impl->allocator.get()));
  const ModelConfig& c = impl->model->config();

  GeneratorOptions g;
  g.max_batch_tokens = options.max_batch_tokens;
  g.max_seqs = options.max_seqs;
  g.block_size = options.block_size;
  g.max_tokens_per_seq = options.max_tokens_per_seq;
  g.step_hook = options.step_hook;
  const int64_t block_bytes = impl->model->KvBytesPerBlock(options.block_size);
  g.num_blocks = options.kv_cache_bytes / block_bytes;
  if (g.num_blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "option kv_cache_bytes=", options.kv_cache_bytes, " holds no KV cache block (one block of ",
        options.block_size, " tokens takes ", block_bytes, " bytes)"));
  }
  ModelInfo& info = impl->info;
  if (comm != nullptr) {
    MOE_ASSIGN_OR_RETURN(impl->runner, EpStepRunner::Create(impl->model.get(),
                                                            impl->backend.get(),
                                                            impl->allocator.get()));
    info.expert_parallel_rank = comm->rank();
    info.expert_parallel_size = comm->size();
    impl->idle_interval = IdleInterval(*comm);
    g.expert_parallel = impl->runner.get();
  }
  if (info.expert_parallel_rank == 0) {
    MOE_ASSIGN_OR_RETURN(impl->generator, Generator::Create(impl->model.get(),
                                                            impl->backend.get(),
                                                            impl->allocator.get(), g));
    info.max_tokens_per_seq = impl->generator->max_tokens_per_seq();
  } else {
    // A serving rank's cache has rank 0's geometry (EpStepRunner::Serve checks it every step).
    MOE_ASSIGN_OR_RETURN(impl->serve_cache,
                         impl->model->AllocateKvCache(g.num_blocks, options.block_size));
    info.max_tokens_per_seq =
        options.max_tokens_per_seq == 0 ? c.max_position_embeddings : options.max_tokens_per_seq;
  }

  info.model_dir = model_dir;
  info.family = std::string(ModelFamilyName(c.family));
  info.backend = options.backend;
  info.vocab_size = c.vocab_size;
  info.hidden_size = c.hidden_size;
  info.num_layers = c.num_hidden_layers;
  info.num_experts = c.moe.num_experts;
  info.experts_per_token = c.moe.top_k;
  info.max_position_embeddings = c.max_position_embeddings;
  info.max_batch_tokens = options.max_batch_tokens;
  info.max_seqs = options.max_seqs;
  MOE_ASSIGN_OR_RETURN(info.eos_token_ids, LoadEosTokenIds(model_dir, c.vocab_size));
  info.dtype = std::string(DTypeName(dtype));
  info.weight_bytes = impl->model->weight_bytes();
  info.kv_cache_blocks = g.num_blocks;
  info.block_size = options.block_size;
  impl->stats.kv_blocks_total = g.num_blocks;
  impl->count_expert_tokens = options.count_expert_tokens;
  if (options.count_expert_tokens) impl->stats.expert_tokens = impl->model->expert_tokens();
  return impl;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const std::string& model_dir,
                                                       const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<Impl>> impl = Impl::Load(model_dir, options);
  if (options.expert_parallel.comm != nullptr) {
    // Every rank fails together: a rank left serving a rank 0 that never came up would wait
    // out its timeout.
    MOE_RETURN_IF_ERROR(AgreeCreated(options.expert_parallel.comm, impl.status()));
  }
  if (!impl.ok()) return impl.status();
  Impl* raw = impl->get();
  if (raw->generator != nullptr) raw->worker = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Engine>(new Engine(*std::move(impl)));
}

absl::StatusOr<RequestId> Engine::Impl::SubmitLocked(GenerationRequest request,
                                                     TokenCallback on_token) {
  MOE_RETURN_IF_ERROR(CheckPlanningRank("Submit"));
  // Validate is const and reads only immutable state.
  MOE_RETURN_IF_ERROR(generator->Validate(ToSequence(request)));
  if (stopping) return absl::FailedPreconditionError("the engine is shut down");
  const RequestId id = next_id++;
  Request& r = requests[id];
  r.result.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  r.request = std::move(request);
  r.on_token = std::move(on_token);
  pending.push_back(id);
  ++stats.waiting;
  work_cv.notify_one();
  return id;
}

absl::StatusOr<RequestId> Engine::Submit(GenerationRequest request, TokenCallback on_token) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->SubmitLocked(std::move(request), std::move(on_token));
}

absl::Status Engine::Cancel(RequestId id) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  auto it = m.requests.find(id);
  if (it == m.requests.end()) {
    return absl::NotFoundError(absl::StrCat("request ", id, " is unknown or already awaited"));
  }
  if (it->second.done) return absl::OkStatus();
  m.cancelled.push_back(id);
  m.work_cv.notify_one();
  return absl::OkStatus();
}

absl::StatusOr<GenerationResult> Engine::Await(RequestId id) {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lock(m.mu);
  auto it = m.requests.find(id);
  if (it == m.requests.end()) {
    return absl::NotFoundError(absl::StrCat("request ", id, " is unknown or already awaited"));
  }
  m.done_cv.wait(lock, [&] { return it->second.done; });
  Impl::Request r = std::move(it->second);
  m.requests.erase(it);
  if (!r.status.ok()) return r.status;
  return std::move(r.result);
}

std::vector<absl::StatusOr<GenerationResult>> Engine::Generate(
    const std::vector<GenerationRequest>& requests) {
  Impl& m = *impl_;
  std::vector<absl::StatusOr<RequestId>> ids;
  ids.reserve(requests.size());
  {
    // All requests enter under one lock: the worker sees them together, so an idle engine
    // runs the same steps for the same batch every time (bit-reproducible results).
    std::lock_guard<std::mutex> lock(m.mu);
    for (const GenerationRequest& r : requests) ids.push_back(m.SubmitLocked(r, nullptr));
  }
  std::vector<absl::StatusOr<GenerationResult>> results;
  results.reserve(requests.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].ok()) {
      results.push_back(absl::Status(ids[i].status().code(),
                                     absl::StrCat("request ", i, ": ", ids[i].status().message())));
    } else {
      results.push_back(Await(*ids[i]));
    }
  }
  return results;
}

absl::StatusOr<std::vector<ForwardResult>> Engine::Forward(const ForwardRequest& request) {
  Impl& m = *impl_;
  MOE_RETURN_IF_ERROR(m.CheckPlanningRank("Forward"));
  MOE_RETURN_IF_ERROR(m.ValidateForward(request));
  Impl::ForwardJob job;
  job.request = &request;
  job.results.resize(request.sequences.size());
  std::unique_lock<std::mutex> lock(m.mu);
  if (m.stopping) return absl::FailedPreconditionError("the engine is shut down");
  m.forward_jobs.push_back(&job);
  m.work_cv.notify_one();
  m.done_cv.wait(lock, [&] { return job.done; });
  if (!job.status.ok()) return job.status;
  return std::move(job.results);
}

void Engine::Shutdown() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.stopping = true;
    m.work_cv.notify_one();
  }
  if (m.worker.joinable()) m.worker.join();
}

absl::Status Engine::ServeExpertParallel() {
  Impl& m = *impl_;
  if (m.runner == nullptr) {
    return absl::FailedPreconditionError(
        "engine: ServeExpertParallel without expert parallelism (EngineOptions::expert_parallel"
        ".comm is null)");
  }
  const int r = m.info.expert_parallel_rank, p = m.info.expert_parallel_size;
  if (m.serve_cache == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("engine: ServeExpertParallel on rank 0 of ", p,
                     ", which runs the scheduler; call Generate / Submit there"));
  }
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.served) {
      return absl::FailedPreconditionError(
          absl::StrCat("engine: ServeExpertParallel called twice on rank ", r, " of ", p));
    }
    m.served = true;
  }
  const absl::Status s = m.runner->Serve(*m.serve_cache);
  if (s.ok()) return s;
  return absl::Status(s.code(),
                      absl::StrCat("engine rank ", r, " of ", p, ": serving: ", s.message()));
}

absl::Status Engine::ExpertParallelStatus() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->ep_status;
}

const ModelInfo& Engine::model_info() const { return impl_->info; }

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

}  // namespace moe
