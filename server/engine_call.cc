#include "server/engine_call.h"

#include <utility>

namespace moe::server {

absl::StatusOr<std::unique_ptr<EngineCall>> EngineCall::Start(Engine* engine,
                                                             GenerationRequest request) {
  auto queue = std::make_shared<Queue>();
  std::unique_ptr<EngineCall> call(new EngineCall(engine, queue));
  absl::StatusOr<RequestId> id =
      engine->Submit(std::move(request), [queue](const TokenEvent& event) {
        std::lock_guard<std::mutex> lock(queue->mu);
        queue->events.push_back({event, std::chrono::steady_clock::now()});
        queue->cv.notify_one();
      });
  if (!id.ok()) return id.status();
  call->id_ = *id;
  return call;
}

EngineCall::~EngineCall() {
  if (!finished_) engine_->Cancel(id_).IgnoreError();
  // Returns once the last callback ran; the engine then forgets the request. Its result (or
  // the step error, already delivered as the last event) is not needed here.
  engine_->Await(id_).IgnoreError();
}

bool EngineCall::Wait(std::chrono::steady_clock::time_point until,
                      std::vector<TimedEvent>* events) {
  events->clear();
  std::unique_lock<std::mutex> lock(queue_->mu);
  if (!queue_->cv.wait_until(lock, until, [&] { return !queue_->events.empty(); })) return false;
  events->swap(queue_->events);
  if (events->back().event.finished) finished_ = true;
  return true;
}

void EngineCall::Cancel() {
  if (!finished_) engine_->Cancel(id_).IgnoreError();
}

}  // namespace moe::server
