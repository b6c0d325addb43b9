// Buffer owns a block of device memory; Allocator makes Buffers for one backend's device and
// counts what it hands out, so tests can prove a hot path allocates nothing.
#ifndef MOE_ENGINE_CORE_BUFFER_H_
#define MOE_ENGINE_CORE_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/device.h"

namespace moe {

class Allocator;

// Device memory freed on destruction. Not copyable; hold it by unique_ptr.
class Buffer {
 public:
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const;

 private:
  friend class Allocator;
  Buffer(Allocator* owner, void* data, size_t size) : owner_(owner), data_(data), size_(size) {}

  Allocator* owner_;
  void* data_;
  size_t size_;
};

// Allocates on the backend's device. Thread-compatible; must outlive its Buffers.
class Allocator {
 public:
  explicit Allocator(Backend* backend) : backend_(backend) {}

  // ResourceExhausted (from the backend) names the size when the device is out of memory.
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes);

  Backend* backend() const { return backend_; }
  // Number of successful Allocate calls so far.
  int64_t allocation_count() const { return allocation_count_; }
  size_t bytes_in_use() const { return bytes_in_use_; }

 private:
  friend class Buffer;
  void Release(void* data, size_t size);

  Backend* backend_;
  int64_t allocation_count_ = 0;
  size_t bytes_in_use_ = 0;
};

}  // namespace moe

#endif  // MOE_ENGINE_CORE_BUFFER_H_
