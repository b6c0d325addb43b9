#include "server/admission.h"

namespace moe::server {

bool Admission::TryAcquire(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n > capacity_ - in_flight_) return false;
  in_flight_ += n;
  return true;
}

void Admission::Release(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_ -= n;
}

int64_t Admission::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_;
}

}  // namespace moe::server
