// Engine: requests in (Submit, Generate, Cancel, Await), the worker thread that steps the
// generator and delivers tokens, shutdown, and an expert-parallel rank's serving loop. Loading
// is in engine_load.cc, Forward in engine_forward.cc, the shared state in engine_impl.h.
#include "engine/api/engine.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/api/engine_impl.h"
#include "engine/api/expert_parallel_setup.h"
#include "engine/model/model.h"
#include "engine/runtime/ep_step_runner.h"
#include "engine/runtime/generator.h"
#include "kernels/status_macros.h"

namespace moe {

bool ParseEqualSplit(const std::string& name, EngineExpertParallel::EqualSplit* mode) {
  using EqualSplit = EngineExpertParallel::EqualSplit;
  if (name == "auto") {
    *mode = EqualSplit::kAuto;
  } else if (name == "always") {
    *mode = EqualSplit::kAlways;
  } else if (name == "never") {
    *mode = EqualSplit::kNever;
  } else {
    return false;
  }
  return true;
}

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

void Engine::Impl::Fail(RequestId id, const absl::Status& error,
                        std::vector<PendingCallback>* callbacks) {
  auto it = requests.find(id);
  if (it == requests.end()) return;
  Request& r = it->second;
  r.status =
      absl::Status(error.code(), absl::StrCat("request ", id, ": step failed: ", error.message()));
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

void Engine::Impl::Apply(const SequenceEvent& e, std::vector<PendingCallback>* callbacks) {
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

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() { Shutdown(); }

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

std::vector<absl::StatusOr<RequestId>> Engine::SubmitBatch(std::vector<GenerationRequest> requests,
                                                           const TokenCallback& on_token) {
  std::vector<absl::StatusOr<RequestId>> ids;
  ids.reserve(requests.size());
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (GenerationRequest& r : requests) ids.push_back(impl_->SubmitLocked(std::move(r), on_token));
  return ids;
}

std::vector<absl::StatusOr<GenerationResult>> Engine::Generate(
    const std::vector<GenerationRequest>& requests) {
  // One batch: bit-reproducible results for the same requests on an idle engine.
  const std::vector<absl::StatusOr<RequestId>> ids = SubmitBatch(requests);
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
