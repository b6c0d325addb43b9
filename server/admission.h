// The bounded admission queue in front of the engine: at most `capacity` requests (prompts;
// a GenerateBatch or Forward call counts each of its entries) may be in the server at once.
// moe_server sets capacity = max_seqs + max_queue: max_seqs can run, max_queue more wait in
// the engine's FIFO; a request beyond that is refused at once (RESOURCE_EXHAUSTED, retry with
// backoff) instead of waiting unboundedly. Thread-safe.
#ifndef MOE_SERVER_ADMISSION_H_
#define MOE_SERVER_ADMISSION_H_

#include <cstdint>
#include <mutex>

namespace moe::server {

class Admission {
 public:
  explicit Admission(int64_t capacity) : capacity_(capacity) {}

  // Admits n requests together, or none: false when fewer than n places are free.
  bool TryAcquire(int64_t n);
  void Release(int64_t n);
  int64_t in_flight() const;
  int64_t capacity() const { return capacity_; }

 private:
  const int64_t capacity_;
  mutable std::mutex mu_;
  int64_t in_flight_ = 0;
};

}  // namespace moe::server

#endif  // MOE_SERVER_ADMISSION_H_
