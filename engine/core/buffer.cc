#include "engine/core/buffer.h"

namespace moe {

Buffer::~Buffer() { owner_->Release(data_, size_); }

Device Buffer::device() const { return owner_->backend()->device(); }

absl::StatusOr<std::unique_ptr<Buffer>> Allocator::Allocate(size_t bytes) {
  void* data = nullptr;
  if (bytes > 0) {
    absl::StatusOr<void*> p = backend_->Allocate(bytes);
    if (!p.ok()) return p.status();
    data = *p;
  }
  ++allocation_count_;
  bytes_in_use_ += bytes;
  return std::unique_ptr<Buffer>(new Buffer(this, data, bytes));
}

void Allocator::Release(void* data, size_t size) {
  if (data != nullptr) backend_->Free(data);
  bytes_in_use_ -= size;
}

}  // namespace moe
