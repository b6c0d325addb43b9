// One engine request as an RPC handler sees it: Start submits it with a callback that queues
// the engine's token events, and the handler thread takes them with Wait. The callback runs on
// the engine's worker and never blocks on the network (a slow client cannot stall the engine).
//
// Cancel asks the engine to end the request; it then stops after the current step and its KV
// blocks and slot are freed. The destructor cancels a request that has not finished and
// awaits it, so the engine forgets it (and its tokens) before the handler returns.
//
// Thread-compatible: one handler thread per EngineCall.
#ifndef MOE_SERVER_ENGINE_CALL_H_
#define MOE_SERVER_ENGINE_CALL_H_

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/api/engine.h"

namespace moe::server {

// An engine event and when the worker delivered it (for the latency histograms).
struct TimedEvent {
  TokenEvent event;
  std::chrono::steady_clock::time_point at;
};

class EngineCall {
 public:
  // The engine's Submit errors (InvalidArgument naming the field, FailedPrecondition after
  // Shutdown).
  static absl::StatusOr<std::unique_ptr<EngineCall>> Start(Engine* engine,
                                                           GenerationRequest request);
  ~EngineCall();
  EngineCall(const EngineCall&) = delete;
  EngineCall& operator=(const EngineCall&) = delete;

  // Moves the events that arrived since the last call into `*events` (cleared first), waiting
  // until there is at least one or `until` passes. False when it timed out with none.
  bool Wait(std::chrono::steady_clock::time_point until, std::vector<TimedEvent>* events);

  // Ends the request in the engine (no-op once it finished).
  void Cancel();

  // Whether the last event (finished = true) was taken by Wait.
  bool finished() const { return finished_; }

 private:
  struct Queue {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<TimedEvent> events;
  };
  EngineCall(Engine* engine, std::shared_ptr<Queue> queue) : engine_(engine), queue_(queue) {}

  Engine* engine_;
  // Shared with the callback, which may still hold it while the engine finishes the request.
  std::shared_ptr<Queue> queue_;
  RequestId id_ = 0;
  bool finished_ = false;
};

}  // namespace moe::server

#endif  // MOE_SERVER_ENGINE_CALL_H_
