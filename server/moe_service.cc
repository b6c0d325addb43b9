#include "server/moe_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/auth.h"

namespace moe::server {
namespace {

using Clock = std::chrono::steady_clock;

// How often a waiting handler looks at its call's cancellation, deadline and the drain: the
// bound on how late a cancel is seen (well under one decode step of a real model).
constexpr std::chrono::milliseconds kPoll(2);

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "ok";
    case grpc::StatusCode::CANCELLED: return "cancelled";
    case grpc::StatusCode::INVALID_ARGUMENT: return "invalid_argument";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "deadline_exceeded";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "resource_exhausted";
    case grpc::StatusCode::FAILED_PRECONDITION: return "failed_precondition";
    case grpc::StatusCode::UNIMPLEMENTED: return "unimplemented";
    case grpc::StatusCode::INTERNAL: return "internal";
    case grpc::StatusCode::UNAVAILABLE: return "unavailable";
    case grpc::StatusCode::UNAUTHENTICATED: return "unauthenticated";
    default: return "other";
  }
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

v1::FinishReason ToProto(FinishReason reason) {
  return reason == FinishReason::kStop ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH;
}

// The status a request's last event ends its call with: OK for length / stop; INTERNAL for a
// failed step; UNAVAILABLE when the engine shut down under it.
grpc::Status EndStatus(const TokenEvent& last) {
  if (!last.status.ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string(last.status.message()));
  }
  if (last.finish_reason == FinishReason::kCancelled) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the engine shut down before the request finished");
  }
  return grpc::Status::OK;
}

// Releases admitted places when the handler returns.
class AdmissionTicket {
 public:
  AdmissionTicket(Admission* admission, int64_t n) : admission_(admission), n_(n) {}
  ~AdmissionTicket() { admission_->Release(n_); }
  AdmissionTicket(const AdmissionTicket&) = delete;
  AdmissionTicket& operator=(const AdmissionTicket&) = delete;

 private:
  Admission* admission_;
  int64_t n_;
};

}  // namespace

MoeService::MoeService(ServiceOptions options, ServerMetrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      admission_(options_.max_seqs + options_.max_queue) {}

void MoeService::SetEngine(Engine* engine) {
  const ModelInfo& info = engine->model_info();
  limits_.vocab_size = info.vocab_size;
  limits_.max_context = info.max_tokens_per_seq;
  limits_.max_batch_requests = options_.max_batch_requests;
  engine_.store(engine);
  state_.store(State::kServing);
}

void MoeService::StartDrain(Clock::time_point grace_end) {
  grace_end_ns_.store(
      std::chrono::duration_cast<std::chrono::nanoseconds>(grace_end.time_since_epoch()).count());
  state_.store(State::kDraining);
}

grpc::Status MoeService::Enter(const grpc::ServerContext& context, const absl::Status& validation,
                               int64_t n) {
  const State state = state_.load();
  if (state != State::kServing) {
    metrics_->CountRejection("unavailable");
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        state == State::kLoading ? "the model is still loading"
                                                 : "the server is shutting down");
  }
  grpc::Status auth = CheckBearerToken(context, options_.bearer_token);
  if (!auth.ok()) {
    metrics_->CountRejection("unauthenticated");
    return auth;
  }
  if (!validation.ok()) {
    metrics_->CountRejection("invalid_argument");
    return ToGrpc(validation);
  }
  if (!admission_.TryAcquire(n)) {
    metrics_->CountRejection("queue_full");
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("admission queue is full: ", admission_.in_flight(), " requests in flight, ",
                     n, " more would exceed max_seqs + max_queue = ", admission_.capacity(),
                     "; retry with backoff"));
  }
  return grpc::Status::OK;
}

grpc::Status MoeService::Finish(const char* method, grpc::Status status) {
  metrics_->CountRequest(method, CodeName(status.error_code()));
  return status;
}

grpc::Status MoeService::Pump(grpc::ServerContext* context,
                              std::vector<std::unique_ptr<EngineCall>>& calls,
                              Clock::time_point start, const EventSink& sink) {
  // The call's deadline on the steady clock (gRPC gives it on the system clock).
  const auto remaining = context->deadline() - std::chrono::system_clock::now();
  const Clock::time_point deadline =
      remaining > std::chrono::hours(24 * 365) ? Clock::time_point::max() : Clock::now() + remaining;
  std::vector<TimedEvent> events;
  std::vector<Clock::time_point> last_token(calls.size(), start);
  std::vector<bool> got_token(calls.size(), false);
  while (true) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("the deadline passed after ",
                                       std::chrono::duration_cast<std::chrono::milliseconds>(
                                           now - start).count(), " ms"));
    }
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
    if (state_.load() == State::kDraining &&
        now.time_since_epoch() >= std::chrono::nanoseconds(grace_end_ns_.load())) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the server is shutting down and the grace period ended before the "
                          "request finished");
    }
    // Wait on the first unfinished call; take what the others have without waiting.
    size_t waiting_on = calls.size();
    for (size_t i = 0; i < calls.size(); ++i) {
      if (calls[i]->finished()) continue;
      const Clock::time_point until =
          waiting_on == calls.size() ? std::min(now + kPoll, deadline) : Clock::time_point::min();
      if (waiting_on == calls.size()) waiting_on = i;
      if (!calls[i]->Wait(until, &events)) continue;
      for (const TimedEvent& e : events) {
        if (e.event.token < 0) continue;
        const double gap = std::chrono::duration<double>(e.at - last_token[i]).count();
        if (got_token[i]) {
          metrics_->ObserveInterTokenLatency(gap);
        } else {
          metrics_->ObserveTimeToFirstToken(gap);
        }
        got_token[i] = true;
        last_token[i] = e.at;
      }
      if (!sink(i, events)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      if (calls[i]->finished()) {
        grpc::Status end = EndStatus(events.back().event);
        if (!end.ok()) return end;
      }
    }
    if (waiting_on == calls.size()) return grpc::Status::OK;  // all finished
  }
}

grpc::Status MoeService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                  grpc::ServerWriter<v1::GenerateResponse>* writer) {
  return Finish("Generate", DoGenerate(context, *request, writer));
}

grpc::Status MoeService::DoGenerate(grpc::ServerContext* context,
                                    const v1::GenerateRequest& request,
                                    grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const Clock::time_point start = Clock::now();
  const absl::Status valid = state_.load() == State::kLoading
                                 ? absl::OkStatus()
                                 : ValidateGenerate(request, limits_);
  grpc::Status gate = Enter(*context, valid, 1);
  if (!gate.ok()) return gate;
  AdmissionTicket ticket(&admission_, 1);
  absl::StatusOr<std::unique_ptr<EngineCall>> call =
      EngineCall::Start(engine_.load(), ToGenerationRequest(request));
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<std::unique_ptr<EngineCall>> calls;
  calls.push_back(std::move(*call));
  const int64_t prompt_tokens = request.prompt_size();
  int64_t completion_tokens = 0;
  return Pump(context, calls, start, [&](size_t, const std::vector<TimedEvent>& events) {
    v1::GenerateResponse response;
    for (const TimedEvent& e : events) {
      if (e.event.token >= 0) {
        response.add_tokens(e.event.token);
        if (request.return_logprobs()) response.add_logprobs(e.event.logprob);
        ++completion_tokens;
      }
      if (e.event.finished && e.event.status.ok() &&
          e.event.finish_reason != FinishReason::kCancelled) {
        response.set_finish_reason(ToProto(e.event.finish_reason));
        response.mutable_usage()->set_prompt_tokens(prompt_tokens);
        response.mutable_usage()->set_completion_tokens(completion_tokens);
      }
    }
    if (response.tokens_size() == 0 && !response.has_usage()) return true;  // nothing to say
    // Checked again just before writing: nothing is written after a cancel seen here.
    return !context->IsCancelled() && writer->Write(response);
  });
}

grpc::Status MoeService::GenerateBatch(grpc::ServerContext* context,
                                       const v1::GenerateBatchRequest* request,
                                       v1::GenerateBatchResponse* response) {
  return Finish("GenerateBatch", DoGenerateBatch(context, *request, response));
}

grpc::Status MoeService::DoGenerateBatch(grpc::ServerContext* context,
                                         const v1::GenerateBatchRequest& request,
                                         v1::GenerateBatchResponse* response) {
  const Clock::time_point start = Clock::now();
  const absl::Status valid = state_.load() == State::kLoading
                                 ? absl::OkStatus()
                                 : ValidateGenerateBatch(request, limits_);
  const int64_t n = request.requests_size();
  grpc::Status gate = Enter(*context, valid, n);
  if (!gate.ok()) return gate;
  AdmissionTicket ticket(&admission_, n);
  std::vector<std::unique_ptr<EngineCall>> calls;
  for (int64_t i = 0; i < n; ++i) {
    absl::StatusOr<std::unique_ptr<EngineCall>> call =
        EngineCall::Start(engine_.load(), ToGenerationRequest(request.requests(i)));
    if (!call.ok()) {
      return grpc::Status(static_cast<grpc::StatusCode>(call.status().code()),
                          absl::StrCat("requests[", i, "]: ", call.status().message()));
    }
    calls.push_back(std::move(*call));
    v1::GenerateResult* result = response->add_results();
    result->mutable_usage()->set_prompt_tokens(request.requests(i).prompt_size());
  }
  grpc::Status status = Pump(context, calls, start, [&](size_t i, const std::vector<TimedEvent>& events) {
    v1::GenerateResult* result = response->mutable_results(static_cast<int>(i));
    for (const TimedEvent& e : events) {
      if (e.event.token >= 0) {
        result->add_tokens(e.event.token);
        if (request.requests(static_cast<int>(i)).return_logprobs()) {
          result->add_logprobs(e.event.logprob);
        }
      }
      if (e.event.finished) result->set_finish_reason(ToProto(e.event.finish_reason));
    }
    result->mutable_usage()->set_completion_tokens(result->tokens_size());
    return true;
  });
  if (!status.ok()) response->Clear();
  return status;
}

grpc::Status MoeService::Forward(grpc::ServerContext* context, const v1::ForwardRequest* request,
                                 v1::ForwardResponse* response) {
  return Finish("Forward", DoForward(context, *request, response));
}

grpc::Status MoeService::DoForward(grpc::ServerContext* context, const v1::ForwardRequest& request,
                                   v1::ForwardResponse* response) {
  const absl::Status valid = state_.load() == State::kLoading
                                 ? absl::OkStatus()
                                 : ValidateForward(request, limits_);
  const int64_t n = request.sequences_size();
  grpc::Status gate = Enter(*context, valid, n);
  if (!gate.ok()) return gate;
  AdmissionTicket ticket(&admission_, n);
  ForwardRequest forward;
  for (const v1::TokenSequence& s : request.sequences()) {
    forward.sequences.emplace_back(s.tokens().begin(), s.tokens().end());
  }
  forward.output = request.output() == v1::FORWARD_OUTPUT_HIDDEN_STATE ? ForwardOutput::kHiddenState
                   : request.output() == v1::FORWARD_OUTPUT_LOGITS    ? ForwardOutput::kLogits
                                                                      : ForwardOutput::kTopLogprobs;
  forward.top_n = request.top_n();
  absl::StatusOr<std::vector<ForwardResult>> results = engine_.load()->Forward(forward);
  if (!results.ok()) {
    // Validated above: what is left is the engine's own failure (or its shutdown).
    return grpc::Status(absl::IsFailedPrecondition(results.status())
                            ? grpc::StatusCode::UNAVAILABLE
                            : grpc::StatusCode::INTERNAL,
                        std::string(results.status().message()));
  }
  for (const ForwardResult& r : *results) {
    v1::ForwardResult* out = response->add_results();
    out->mutable_values()->Add(r.values.begin(), r.values.end());
    out->mutable_top_ids()->Add(r.top_ids.begin(), r.top_ids.end());
    out->mutable_top_logprobs()->Add(r.top_logprobs.begin(), r.top_logprobs.end());
  }
  return grpc::Status::OK;
}

grpc::Status MoeService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                                      v1::ModelInfo* response) {
  if (state_.load() == State::kLoading) {
    return Finish("GetModelInfo", grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                               "the model is still loading"));
  }
  grpc::Status auth = CheckBearerToken(*context, options_.bearer_token);
  if (!auth.ok()) {
    metrics_->CountRejection("unauthenticated");
    return Finish("GetModelInfo", auth);
  }
  const Engine* engine = engine_.load();
  const ModelInfo& info = engine->model_info();
  response->set_family(info.family);
  response->set_vocab_size(info.vocab_size);
  response->set_hidden_size(info.hidden_size);
  response->set_num_layers(info.num_layers);
  response->set_num_experts(info.num_experts);
  response->set_experts_per_token(info.experts_per_token);
  response->set_dtype(info.dtype);
  response->set_backend(info.backend);
  // One device per engine today (expert parallelism across devices is not served yet).
  response->add_devices(info.backend == "cpu" ? "cpu" : info.backend + ":0");
  response->set_weight_bytes(info.weight_bytes);
  for (const int32_t id : info.eos_token_ids) response->add_eos_token_ids(id);
  response->set_max_context(limits_.max_context);
  response->set_max_batch_tokens(info.max_batch_tokens);
  response->set_max_seqs(options_.max_seqs);
  response->set_max_queue(options_.max_queue);
  response->set_max_batch_requests(options_.max_batch_requests);
  response->set_max_message_bytes(options_.max_message_bytes);
  response->set_kv_cache_blocks(info.kv_cache_blocks);
  response->set_block_size(info.block_size);
  return Finish("GetModelInfo", grpc::Status::OK);
}

}  // namespace moe::server
