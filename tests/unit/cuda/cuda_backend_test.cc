// The CUDA backend through the Backend interface: creation from the registry, Describe, the
// pool allocator, the copies, Bincount against the CPU backend, and the ops not built yet.
// Without a CUDA device the GPU cases are skipped with the reason (never passed); the registry's
// NotFound for a missing device is checked everywhere.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_util.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// The number of CUDA devices, or -1 with `why` set when they cannot be counted.
int DeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err);
    return -1;
  }
  return count;
}

// "" if a CUDA device is usable, else why not.
std::string NoDeviceReason() {
  std::string why;
  const int count = DeviceCount(&why);
  if (count < 0) return "no CUDA device: " + why;
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return "";
}

TEST(CudaRegistryTest, MissingDevicesAreNotFoundNamingTheDeviceAndTheCount) {
  std::string why;
  const int count = DeviceCount(&why);
  std::vector<int> missing = {-1, 64};
  if (count <= 0) missing.push_back(0);
  if (count > 0) missing.push_back(count);
  for (int index : missing) {
    SCOPED_TRACE(::testing::Message() << "index " << index);
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device::Cuda(index));
    ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
    EXPECT_THAT(Msg(b.status()),
                HasSubstr("backend: no device " + Device::Cuda(index).ToString() + " ("));
    if (count < 0) {
      EXPECT_THAT(Msg(b.status()), HasSubstr(why));
    } else {
      EXPECT_THAT(Msg(b.status()), HasSubstr(absl::StrCat("this machine has ", count, " CUDA")));
    }
  }
}

TEST(CudaRegistryTest, EveryDeviceHasABackend) {
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  std::string why;
  const int count = DeviceCount(&why);
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device::Cuda(i));
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->device(), Device::Cuda(i));
    EXPECT_THAT((*b)->Describe(), HasSubstr(Device::Cuda(i).ToString() + " ("));
  }
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoDeviceReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(Device::Cuda(0));
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(b).value();
    absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend(Device::Cpu());
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(cpu).value();
  }

  void* Alloc(size_t bytes) {
    absl::StatusOr<void*> p = backend_->Allocate(bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }

  template <typename T>
  T* Upload(const std::vector<T>& host) {
    void* p = Alloc(host.size() * sizeof(T));
    EXPECT_TRUE(backend_->CopyFromHost(p, host.data(), host.size() * sizeof(T)).ok());
    return static_cast<T*>(p);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Backend> cpu_;
};

std::vector<uint8_t> RandomBytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST_F(CudaBackendTest, DescribeNamesTheGpu) {
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  const std::string d = backend_->Describe();
  EXPECT_THAT(d, HasSubstr("cuda:0 ("));
  EXPECT_THAT(d, HasSubstr(prop.name));
  EXPECT_THAT(d, HasSubstr(absl::StrCat(prop.multiProcessorCount, " SMs")));
  EXPECT_THAT(d, HasSubstr("CUDA runtime "));
  std::printf("%s\n", d.c_str());
}

TEST_F(CudaBackendTest, AllocatesManySizesAlignedAndWritable) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  const std::vector<size_t> sizes = {
      0, 1, 3, 255, 256, 4097, 1 << 20, (1 << 20) + 1, size_t{64} << 20, size_t{1} << 30};
  std::vector<void*> live;
  for (size_t bytes : sizes) {
    SCOPED_TRACE(::testing::Message() << bytes << " bytes");
    void* p = Alloc(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
    for (void* q : live) EXPECT_NE(p, q);
    live.push_back(p);
    // First and last bytes are usable.
    const size_t n = std::min<size_t>(bytes, 4096);
    if (n == 0) continue;
    const std::vector<uint8_t> want = RandomBytes(n, rng);
    char* tail = static_cast<char*>(p) + bytes - n;
    ASSERT_TRUE(backend_->CopyFromHost(p, want.data(), n).ok());
    ASSERT_TRUE(backend_->CopyFromHost(tail, want.data(), n).ok());
    std::vector<uint8_t> got(n);
    ASSERT_TRUE(backend_->CopyToHost(got.data(), tail, n).ok());
    EXPECT_EQ(got, want);
  }
  for (void* p : live) backend_->Free(p);
  backend_->Free(nullptr);
  // Freed memory is reused from the pool: many rounds do not grow without bound or fail.
  for (int round = 0; round < 1000; ++round) {
    void* p = Alloc(static_cast<size_t>(round % 17) * 4099);
    ASSERT_NE(p, nullptr);
    backend_->Free(p);
  }
  EXPECT_TRUE(backend_->Synchronize().ok());
}

TEST_F(CudaBackendTest, OutOfMemoryIsResourceExhaustedNamingTheSizes) {
  size_t free_bytes = 0;
  size_t total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  const size_t huge = total * 2;
  absl::StatusOr<void*> p = backend_->Allocate(huge);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
  EXPECT_THAT(Msg(p.status()), HasSubstr(absl::StrCat("cuda:0: cannot allocate ", huge, " bytes")));
  EXPECT_THAT(Msg(p.status()), HasSubstr(absl::StrCat(" of ", total, " bytes free on the device")));
  // Out of memory for real: two requests that fit alone but not together.
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  const size_t big = free_bytes / 10 * 6;
  void* first = Alloc(big);
  ASSERT_NE(first, nullptr);
  p = backend_->Allocate(big);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
  EXPECT_THAT(Msg(p.status()), HasSubstr(absl::StrCat("cannot allocate ", big, " bytes")));
  EXPECT_THAT(Msg(p.status()), HasSubstr("bytes free on the device"));
  backend_->Free(first);
  // Freed in stream order, the memory serves the same request again.
  void* again = Alloc(big);
  EXPECT_NE(again, nullptr);
  backend_->Free(again);
  // The failures leave nothing behind: allocation and a kernel launch still work.
  void* ok = Alloc(1024);
  ASSERT_NE(ok, nullptr);
  const std::vector<int32_t> ids = {0, 1, 1};
  int32_t* d_ids = Upload(ids);
  BincountArgs a;
  a.n = 3;
  a.ids = d_ids;
  a.num_bins = 2;
  a.counts = static_cast<int64_t*>(ok);
  EXPECT_TRUE(backend_->Bincount(a).ok());
  backend_->Free(ok);
  backend_->Free(d_ids);
}

TEST_F(CudaBackendTest, CopiesRoundTripFromPageableMemoryAtOffsets) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  constexpr size_t kSlot = size_t{4} << 20;  // the backend's staging slot
  const size_t capacity = 3 * kSlot + 4096;
  char* d = static_cast<char*>(Alloc(capacity));
  ASSERT_NE(d, nullptr);
  for (size_t bytes : {size_t{1}, size_t{7}, size_t{4096}, kSlot - 1, kSlot, kSlot + 1,
                       2 * kSlot + 13, 3 * kSlot}) {
    for (size_t offset : {size_t{0}, size_t{1}, size_t{13}}) {
      SCOPED_TRACE(::testing::Message() << bytes << " bytes at offset " << offset);
      if (offset + bytes > capacity) continue;
      std::vector<uint8_t> host = RandomBytes(bytes, rng);
      const std::vector<uint8_t> want = host;
      ASSERT_TRUE(backend_->CopyFromHost(d + offset, host.data(), bytes).ok());
      // The host buffer may be reused as soon as CopyFromHost returns.
      std::memset(host.data(), 0xee, bytes);
      std::vector<uint8_t> got(bytes + 2, 0x11);
      ASSERT_TRUE(backend_->CopyToHost(got.data() + 1, d + offset, bytes).ok());
      EXPECT_EQ(got[0], 0x11);
      EXPECT_EQ(got[bytes + 1], 0x11);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin() + 1));
    }
  }
  backend_->Free(d);
}

TEST_F(CudaBackendTest, BackToBackUploadsFromOneReusedHostBuffer) {
  // Many small uploads through the same pageable buffer, rewritten after each call, before
  // anything synchronizes: every region keeps the bytes it was given.
  constexpr int kRegions = 64;
  constexpr size_t kBytes = 3 << 20;  // more than one staging slot's worth in flight
  char* d = static_cast<char*>(Alloc(kRegions * kBytes));
  ASSERT_NE(d, nullptr);
  std::vector<uint8_t> host(kBytes);
  for (int r = 0; r < kRegions; ++r) {
    std::memset(host.data(), r, kBytes);
    ASSERT_TRUE(backend_->CopyFromHost(d + r * kBytes, host.data(), kBytes).ok());
  }
  std::vector<uint8_t> got(kBytes);
  for (int r = 0; r < kRegions; ++r) {
    ASSERT_TRUE(backend_->CopyToHost(got.data(), d + r * kBytes, kBytes).ok());
    EXPECT_EQ(got, std::vector<uint8_t>(kBytes, static_cast<uint8_t>(r))) << "region " << r;
  }
  backend_->Free(d);
}

TEST_F(CudaBackendTest, CopiesFromPinnedAndDeviceMemory) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  const size_t bytes = (size_t{5} << 20) + 3;
  const std::vector<uint8_t> want = RandomBytes(bytes, rng);
  void* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, bytes), cudaSuccess);
  std::memcpy(pinned, want.data(), bytes);
  char* d = static_cast<char*>(Alloc(2 * bytes));
  ASSERT_TRUE(backend_->CopyFromHost(d, pinned, bytes).ok());
  std::memset(pinned, 0, bytes);  // reusable at once, pinned too
  // A device source is copied in stream order.
  ASSERT_TRUE(backend_->CopyFromHost(d + bytes, d, bytes).ok());
  ASSERT_TRUE(backend_->CopyToHost(pinned, d + bytes, bytes).ok());
  EXPECT_EQ(std::memcmp(pinned, want.data(), bytes), 0);
  cudaFreeHost(pinned);
  backend_->Free(d);
}

// backend.h does not forbid overlap; the CPU backend copies with memmove, and so does this one.
TEST_F(CudaBackendTest, CopyOnDeviceHasMemmoveSemantics) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  const size_t n = (size_t{1} << 20) + 77;
  const std::vector<uint8_t> init = RandomBytes(n, rng);
  char* d = static_cast<char*>(Alloc(n));
  struct Case {
    size_t dst, src, bytes;
  };
  for (const Case& c : {Case{1000, 0, 4000}, Case{0, 1000, 4000}, Case{5, 0, n - 5},
                        Case{0, 5, n - 5}, Case{300, 300, 100}, Case{n / 2, 0, n / 2}}) {
    SCOPED_TRACE(::testing::Message()
                 << "dst " << c.dst << " src " << c.src << " bytes " << c.bytes);
    ASSERT_TRUE(backend_->CopyFromHost(d, init.data(), n).ok());
    std::vector<uint8_t> want = init;
    std::memmove(want.data() + c.dst, want.data() + c.src, c.bytes);
    ASSERT_TRUE(backend_->CopyOnDevice(d + c.dst, d + c.src, c.bytes).ok());
    std::vector<uint8_t> got(n);
    ASSERT_TRUE(backend_->CopyToHost(got.data(), d, n).ok());
    EXPECT_EQ(got, want);
  }
  backend_->Free(d);
}

TEST_F(CudaBackendTest, CopiesRejectNullPointersAndAcceptZeroBytes) {
  char host[8] = {};
  void* d = Alloc(8);
  absl::Status s = backend_->CopyFromHost(d, nullptr, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "copy_from_host: src is null for 8 bytes");
  s = backend_->CopyToHost(nullptr, d, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s), "copy_to_host: dst is null for 8 bytes");
  s = backend_->CopyOnDevice(d, nullptr, 3);
  EXPECT_EQ(Msg(s), "copy_on_device: src is null for 3 bytes");
  EXPECT_TRUE(backend_->CopyFromHost(nullptr, nullptr, 0).ok());
  EXPECT_TRUE(backend_->CopyToHost(host, nullptr, 0).ok());
  EXPECT_TRUE(backend_->CopyOnDevice(nullptr, d, 0).ok());
  backend_->Free(d);
}

TEST_F(CudaBackendTest, BincountMatchesTheCpuBackend) {
  std::mt19937_64 rng(moe::testing::TestSeed());
  for (int64_t n : {0, 1, 1000, 65537}) {
    for (int64_t bins : {1, 8, 257, 12289}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " num_bins=" << bins);
      std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(bins - 1));
      std::vector<int32_t> ids(n);
      for (int32_t& id : ids) id = dist(rng);
      std::vector<int64_t> want(bins, -1);
      BincountArgs a;
      a.n = n;
      a.ids = ids.data();
      a.num_bins = bins;
      a.counts = want.data();
      ASSERT_TRUE(cpu_->Bincount(a).ok());

      int32_t* d_ids = n > 0 ? Upload(ids) : nullptr;
      int64_t* d_counts = Upload(std::vector<int64_t>(bins, -1));
      a.ids = d_ids;
      a.counts = d_counts;
      const absl::Status s = backend_->Bincount(a);
      ASSERT_TRUE(s.ok()) << s;
      std::vector<int64_t> got(bins);
      ASSERT_TRUE(backend_->CopyToHost(got.data(), d_counts, bins * sizeof(int64_t)).ok());
      EXPECT_EQ(got, want);
      backend_->Free(d_ids);
      backend_->Free(d_counts);
    }
  }
}

TEST_F(CudaBackendTest, BincountReportsTheFirstBadIdAsTheCpuBackendDoes) {
  for (const std::vector<int32_t>& ids :
       {std::vector<int32_t>{0, 1, 2, -1, 9}, std::vector<int32_t>{3, 4, 1},
        std::vector<int32_t>{0, 0, 2147483647}}) {
    std::vector<int64_t> cpu_counts(4);
    BincountArgs a;
    a.n = static_cast<int64_t>(ids.size());
    a.ids = ids.data();
    a.num_bins = 4;
    a.counts = cpu_counts.data();
    const absl::Status want = cpu_->Bincount(a);
    ASSERT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
    int32_t* d_ids = Upload(ids);
    int64_t* d_counts = static_cast<int64_t*>(Alloc(4 * sizeof(int64_t)));
    a.ids = d_ids;
    a.counts = d_counts;
    ASSERT_TRUE(backend_->Bincount(a).ok());  // reported at the next wait
    const absl::Status got = backend_->Synchronize();
    EXPECT_EQ(got.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Msg(got), Msg(want));
    backend_->Free(d_ids);
    backend_->Free(d_counts);
  }
}

// CaptureOps records without running; each Replay runs the recorded ops on the memory's
// contents at that time.
TEST_F(CudaBackendTest, RecordedOpsRunOnlyWhenReplayedOnTheCurrentInputs) {
  constexpr int64_t n = 1001;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> a(n), b(n);
  for (int64_t i = 0; i < n; ++i) a[i] = u(rng), b[i] = u(rng);
  float* da = Upload(a);
  float* db = Upload(b);
  float* dout = Upload(std::vector<float>(n, -7.0f));
  absl::StatusOr<std::unique_ptr<OpGraph>> graph = backend_->CaptureOps([&] {
    MOE_RETURN_IF_ERROR(
        backend_->Add({.n = n, .dtype = DType::kF32, .a = da, .b = db, .out = dout}));
    return backend_->Add({.n = n, .dtype = DType::kF32, .a = dout, .b = db, .out = dout});
  });
  ASSERT_TRUE(graph.ok()) << graph.status();
  std::vector<float> out(n);
  ASSERT_TRUE(backend_->CopyToHost(out.data(), dout, n * sizeof(float)).ok());
  EXPECT_EQ(out, std::vector<float>(n, -7.0f)) << "recording ran the ops";
  for (int round = 0; round < 2; ++round) {
    for (float& x : a) x = u(rng);
    ASSERT_TRUE(backend_->CopyFromHost(da, a.data(), n * sizeof(float)).ok());
    ASSERT_TRUE((*graph)->Replay().ok());
    ASSERT_TRUE(backend_->CopyToHost(out.data(), dout, n * sizeof(float)).ok());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], (a[i] + b[i]) + b[i]) << i;
  }
  graph->reset();
  backend_->Free(da);
  backend_->Free(db);
  backend_->Free(dout);
}

TEST_F(CudaBackendTest, RecordingRefusesWhatWouldWaitForTheHostAndRecovers) {
  float* d = Upload(std::vector<float>(16, 1.0f));
  std::vector<float> host(16, 0.0f);
  const std::vector<std::pair<const char*, std::function<absl::Status()>>> cases = {
      {"allocate(64 bytes)", [&] { return backend_->Allocate(64).status(); }},
      {"copy_from_host (host memory)",
       [&] { return backend_->CopyFromHost(d, host.data(), sizeof(float)); }},
      {"copy_to_host", [&] { return backend_->CopyToHost(host.data(), d, sizeof(float)); }},
      {"waiting for the device", [&] { return backend_->Synchronize(); }},
  };
  for (const auto& [what, call] : cases) {
    SCOPED_TRACE(what);
    absl::StatusOr<std::unique_ptr<OpGraph>> graph = backend_->CaptureOps(call);
    EXPECT_EQ(graph.status().code(), absl::StatusCode::kFailedPrecondition) << graph.status();
    EXPECT_THAT(Msg(graph.status()),
                HasSubstr(absl::StrCat("cuda:0: ", what, " while recording an op graph")));
    // The stream works as before.
    ASSERT_TRUE(backend_->CopyToHost(host.data(), d, 16 * sizeof(float)).ok());
    EXPECT_EQ(host, std::vector<float>(16, 1.0f));
  }
  // A free while recording is made after the capture, which then fails.
  absl::StatusOr<void*> spare = backend_->Allocate(256);
  ASSERT_TRUE(spare.ok());
  absl::StatusOr<std::unique_ptr<OpGraph>> graph = backend_->CaptureOps([&] {
    backend_->Free(*spare);
    return absl::OkStatus();
  });
  EXPECT_EQ(graph.status().code(), absl::StatusCode::kFailedPrecondition) << graph.status();
  EXPECT_THAT(Msg(graph.status()), HasSubstr("free while recording an op graph"));
  EXPECT_TRUE(backend_->Synchronize().ok());
  backend_->Free(d);
}

// A recorded op that finds a bad index reports it, as the op would, at the next wait after
// each replay; a replay with good data reports nothing.
TEST_F(CudaBackendTest, ReplaysReportTheRecordedOpsDataErrors) {
  constexpr int64_t rows = 3, cols = 5;
  std::vector<float> src(rows * cols);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
  float* dsrc = Upload(src);
  int32_t* dindex = Upload(std::vector<int32_t>{2, 0, 1});
  float* ddst = Upload(std::vector<float>(rows * cols, 0.0f));
  const GatherRowsArgs gather{.rows = rows,
                              .cols = cols,
                              .dtype = DType::kF32,
                              .src = dsrc,
                              .src_ld = cols,
                              .src_rows = rows,
                              .index = dindex,
                              .dst = ddst,
                              .dst_ld = cols};
  absl::StatusOr<std::unique_ptr<OpGraph>> graph =
      backend_->CaptureOps([&] { return backend_->GatherRows(gather); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE((*graph)->Replay().ok());
  EXPECT_TRUE(backend_->Synchronize().ok());
  const std::vector<int32_t> bad = {2, 7, 1};
  ASSERT_TRUE(backend_->CopyFromHost(dindex, bad.data(), bad.size() * sizeof(int32_t)).ok());
  ASSERT_TRUE((*graph)->Replay().ok());
  const absl::Status got = backend_->Synchronize();
  std::vector<float> cpu_dst(rows * cols);
  GatherRowsArgs on_cpu = gather;
  on_cpu.src = src.data();
  on_cpu.index = bad.data();
  on_cpu.dst = cpu_dst.data();
  const absl::Status want = cpu_->GatherRows(on_cpu);
  ASSERT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got, want);
  graph->reset();
  backend_->Free(dsrc);
  backend_->Free(dindex);
  backend_->Free(ddst);
}

TEST_F(CudaBackendTest, SampleWorkspaceBytesIsZeroForNothingAndGrowsWithTheShape) {
  EXPECT_EQ(backend_->SampleWorkspaceBytes(0, 1000), 0u);
  EXPECT_EQ(backend_->SampleWorkspaceBytes(4, 0), 0u);
  const size_t small = backend_->SampleWorkspaceBytes(1, 1000);
  EXPECT_GE(small, 1000u * 24);
  EXPECT_LE(small, backend_->SampleWorkspaceBytes(2, 1000));
  EXPECT_LE(small, backend_->SampleWorkspaceBytes(1, 1001));
}

}  // namespace
}  // namespace moe
