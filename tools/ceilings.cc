#include "tools/ceilings.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace moe::tools {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Backend memory released on scope exit.
class DeviceBlock {
 public:
  DeviceBlock(Backend* backend, void* p) : backend_(backend), p_(p) {}
  ~DeviceBlock() { backend_->Free(p_); }
  DeviceBlock(const DeviceBlock&) = delete;
  DeviceBlock& operator=(const DeviceBlock&) = delete;
  void* get() const { return p_; }

 private:
  Backend* backend_;
  void* p_;
};

}  // namespace

absl::StatusOr<CopyCeiling> MeasureCopy(int64_t bytes, int reps) {
  constexpr int64_t kAlign = 4096;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  std::unique_ptr<char, FreeDeleter> src(static_cast<char*>(std::aligned_alloc(kAlign, bytes)));
  std::unique_ptr<char, FreeDeleter> dst(static_cast<char*>(std::aligned_alloc(kAlign, bytes)));
  if (src == nullptr || dst == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("copy ceiling: cannot allocate 2 x ", bytes, " bytes"));
  }
  auto slice = [bytes](int thread, int threads, int64_t* begin, int64_t* len) {
    const int64_t pages = bytes / kAlign;
    const int64_t b = pages * thread / threads;
    const int64_t e = pages * (thread + 1) / threads;
    *begin = b * kAlign;
    *len = (e - b) * kAlign;
  };
#pragma omp parallel
  {
    int64_t begin, len;
    slice(omp_get_thread_num(), omp_get_num_threads(), &begin, &len);
    std::memset(src.get() + begin, 1, len);
    std::memset(dst.get() + begin, 0, len);
  }
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const double t0 = Now();
#pragma omp parallel
    {
      int64_t begin, len;
      slice(omp_get_thread_num(), omp_get_num_threads(), &begin, &len);
      std::memcpy(dst.get() + begin, src.get() + begin, len);
    }
    best = std::min(best, Now() - t0);
  }
  CopyCeiling c;
  c.bytes = bytes;
  c.seconds = best;
  c.gbps = 2.0 * static_cast<double>(bytes) / best / 1e9;
  return c;
}

absl::StatusOr<CopyCeiling> MeasureDeviceCopy(Backend* backend, int64_t bytes, int reps) {
  constexpr int64_t kAlign = 4096;
  bytes = std::max<int64_t>((bytes + kAlign - 1) / kAlign * kAlign, kAlign);
  MOE_ASSIGN_OR_RETURN(void* src_ptr, backend->Allocate(bytes));
  DeviceBlock src(backend, src_ptr);
  MOE_ASSIGN_OR_RETURN(void* dst_ptr, backend->Allocate(bytes));
  DeviceBlock dst(backend, dst_ptr);
  {
    // A pattern of at most 16 MiB from the host, then doubled on the device: filling 2 GiB
    // through host staging would take longer than the measurement.
    const int64_t seed_bytes = std::min<int64_t>(bytes, int64_t{16} << 20);
    std::vector<uint64_t> pattern(seed_bytes / 8);
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = 0x9e3779b97f4a7c15ull * (i + 1);
    MOE_RETURN_IF_ERROR(backend->CopyFromHost(src.get(), pattern.data(), seed_bytes));
    char* s = static_cast<char*>(src.get());
    for (int64_t filled = seed_bytes; filled < bytes;) {
      const int64_t n = std::min(filled, bytes - filled);
      MOE_RETURN_IF_ERROR(backend->CopyOnDevice(s + filled, s, n));
      filled += n;
    }
  }
  MOE_RETURN_IF_ERROR(backend->CopyOnDevice(dst.get(), src.get(), bytes));  // warm-up
  MOE_RETURN_IF_ERROR(backend->Synchronize());
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const double t0 = Now();
    MOE_RETURN_IF_ERROR(backend->CopyOnDevice(dst.get(), src.get(), bytes));
    MOE_RETURN_IF_ERROR(backend->Synchronize());
    best = std::min(best, Now() - t0);
  }
  CopyCeiling c;
  c.bytes = bytes;
  c.seconds = best;
  c.gbps = 2.0 * static_cast<double>(bytes) / best / 1e9;
  return c;
}

absl::StatusOr<ReadCeiling> MeasureRead(int64_t bytes, int reps) {
  constexpr int64_t kAlign = 4096;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  std::unique_ptr<char, FreeDeleter> src(static_cast<char*>(std::aligned_alloc(kAlign, bytes)));
  if (src == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("read ceiling: cannot allocate ", bytes, " bytes"));
  }
  const int64_t words = bytes / 8;
  const auto* w = reinterpret_cast<const uint64_t*>(src.get());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < words; ++i) const_cast<uint64_t*>(w)[i] = static_cast<uint64_t>(i);
  double best = std::numeric_limits<double>::infinity();
  uint64_t total = 0;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const double t0 = Now();
    uint64_t sum = 0;
    // Same static schedule as the fill: each thread reads the pages it touched first.
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (int64_t i = 0; i < words; ++i) sum += w[i];
    best = std::min(best, Now() - t0);
    total += sum;
  }
  // The sum is checked so the compiler cannot drop the reads.
  const uint64_t n = static_cast<uint64_t>(words);
  if (total != static_cast<uint64_t>(std::max(reps, 1)) * (n * (n - 1) / 2)) {
    return absl::InternalError("read ceiling: wrong checksum");
  }
  ReadCeiling c;
  c.bytes = bytes;
  c.seconds = best;
  c.gbps = static_cast<double>(bytes) / best / 1e9;
  return c;
}

absl::StatusOr<GemmCeiling> MeasureGemm(Backend* backend, int64_t m, int64_t n, int64_t k,
                                        int reps) {
  const size_t elt = DTypeSize(DType::kBF16);
  MOE_ASSIGN_OR_RETURN(void* a_ptr, backend->Allocate(m * k * elt));
  DeviceBlock a(backend, a_ptr);
  MOE_ASSIGN_OR_RETURN(void* b_ptr, backend->Allocate(n * k * elt));
  DeviceBlock b(backend, b_ptr);
  MOE_ASSIGN_OR_RETURN(void* c_ptr, backend->Allocate(m * n * elt));
  DeviceBlock c(backend, c_ptr);
  {
    // Small values: the product stays finite; host staging keeps this backend-agnostic.
    std::vector<bf16> host(std::max(m, n) * k);
    for (size_t i = 0; i < host.size(); ++i) {
      host[i] = FloatToBf16(static_cast<float>(static_cast<int>(i % 17) - 8) / 64.0f);
    }
    MOE_RETURN_IF_ERROR(backend->CopyFromHost(a.get(), host.data(), m * k * elt));
    MOE_RETURN_IF_ERROR(backend->CopyFromHost(b.get(), host.data(), n * k * elt));
  }
  // B packed once, as the MoE block packs its expert weights: the fastest GEMM the backend has.
  PackWeightsArgs pack;
  pack.batch = 1;
  pack.k = k;
  pack.n = n;
  pack.b = b.get();
  pack.dtype = DType::kBF16;
  pack.ldb = k;
  pack.trans_b = true;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<PackedWeights> packed, backend->PackWeights(pack));
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a.get();
  g.a_dtype = DType::kBF16;
  g.lda = k;
  g.b_dtype = DType::kBF16;
  g.packed_b = packed.get();
  g.c = c.get();
  g.c_dtype = DType::kBF16;
  g.ldc = n;
  MOE_RETURN_IF_ERROR(backend->Gemm(g));  // warm-up: primitive creation, page faults
  MOE_RETURN_IF_ERROR(backend->Synchronize());
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < std::max(reps, 1); ++r) {
    const double t0 = Now();
    MOE_RETURN_IF_ERROR(backend->Gemm(g));
    MOE_RETURN_IF_ERROR(backend->Synchronize());
    best = std::min(best, Now() - t0);
  }
  GemmCeiling out;
  out.m = m;
  out.n = n;
  out.k = k;
  out.seconds = best;
  out.gflops = 2.0 * m * n * k / best / 1e9;
  return out;
}

}  // namespace moe::tools
