// A Backend that only allocates: host memory under any Device, counted, with an optional limit.
// The core tests use it to put Buffers on several devices and to see every Allocate/Free.
#ifndef MOE_TESTS_UNIT_CORE_FAKE_BACKEND_H_
#define MOE_TESTS_UNIT_CORE_FAKE_BACKEND_H_

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"

namespace moe::testing {

class FakeBackend final : public Backend {
 public:
  explicit FakeBackend(Device device = Device::Cpu(),
                       size_t capacity = std::numeric_limits<size_t>::max())
      : device_(device), capacity_(capacity) {}

  Device device() const override { return device_; }
  std::string Describe() const override { return "fake " + device_.ToString(); }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    if (bytes > capacity_ - bytes_live_) {
      return absl::ResourceExhaustedError(absl::StrCat("fake: cannot allocate ", bytes, " bytes; ",
                                                       capacity_ - bytes_live_, " of ", capacity_,
                                                       " free"));
    }
    // Aligned like the real backends (256 bytes), so tests can check slice alignment.
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (p == nullptr)
      return absl::ResourceExhaustedError(absl::StrCat("fake: aligned_alloc ", bytes));
    ++allocate_calls_;
    bytes_live_ += bytes;
    sizes_[p] = bytes;
    return p;
  }
  void Free(void* ptr) override {
    ++free_calls_;
    auto it = sizes_.find(ptr);
    if (it != sizes_.end()) {
      bytes_live_ -= it->second;
      sizes_.erase(it);
    }
    std::free(ptr);
  }
  absl::Status CopyFromHost(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  // RunSample is unimplemented, so Sample needs no scratch here.
  size_t SampleWorkspaceBytes(int64_t, int64_t) const override { return 0; }

  int allocate_calls() const { return allocate_calls_; }
  int free_calls() const { return free_calls_; }
  // Bytes allocated and not yet freed, as the backend sees them.
  size_t bytes_live() const { return bytes_live_; }

 protected:
  absl::StatusOr<std::unique_ptr<PackedWeights>> RunPackWeights(const PackWeightsArgs&) override {
    return Unimplemented();
  }
  absl::Status RunRepackWeights(PackedWeights*, int64_t, const void*, int64_t) override {
    return Unimplemented();
  }
  absl::Status RunUnpackWeights(const PackedWeights&, int64_t, void*, int64_t) override {
    return Unimplemented();
  }
  absl::Status RunGemm(const GemmArgs&) override { return Unimplemented(); }
  absl::Status RunBatchedGemm(const BatchedGemmArgs&) override { return Unimplemented(); }
  absl::Status RunGroupedGemm(const GroupedGemmArgs&) override { return Unimplemented(); }
  absl::Status RunRouter(const RouterArgs&) override { return Unimplemented(); }
  absl::Status RunBincount(const BincountArgs&) override { return Unimplemented(); }
  absl::Status RunExpertOrder(const ExpertOrderArgs&) override { return Unimplemented(); }
  absl::Status RunGatherRows(const GatherRowsArgs&) override { return Unimplemented(); }
  absl::Status RunSwiGlu(const SwiGluArgs&) override { return Unimplemented(); }
  absl::Status RunCombine(const CombineArgs&) override { return Unimplemented(); }
  absl::Status RunScaleRows(const ScaleRowsArgs&) override { return Unimplemented(); }
  absl::Status RunAdd(const AddArgs&) override { return Unimplemented(); }
  absl::Status RunCast(const CastArgs&) override { return Unimplemented(); }
  absl::Status RunRmsNorm(const RmsNormArgs&) override { return Unimplemented(); }
  absl::Status RunRope(const RopeArgs&) override { return Unimplemented(); }
  absl::Status RunEmbedding(const EmbeddingArgs&) override { return Unimplemented(); }
  absl::Status RunKvWrite(const KvWriteArgs&) override { return Unimplemented(); }
  absl::Status RunAttention(const AttentionArgs&) override { return Unimplemented(); }
  absl::Status RunSample(const SampleArgs&) override { return Unimplemented(); }

 private:
  static absl::Status Unimplemented() { return absl::UnimplementedError("fake backend: no ops"); }

  Device device_;
  size_t capacity_;
  size_t bytes_live_ = 0;
  absl::flat_hash_map<void*, size_t> sizes_;
  int allocate_calls_ = 0;
  int free_calls_ = 0;
};

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_CORE_FAKE_BACKEND_H_
