// The ops wired into CudaBackend, called through the Backend interface (validation, the
// backend's stream and error words) and compared bit for bit with the CPU backend on a small
// decoder-like sequence: embedding -> rmsnorm -> rope -> kv_write -> add -> swiglu -> cast ->
// scale_rows -> gather_rows. Skipped without a CUDA device.
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/registry.h"
#include "kernels/rope_table.h"
#include "tests/unit/cuda/op_test_util.h"

namespace moe::cuda::testing {
namespace {

// A buffer on one backend holding a copy of host bytes.
class BackendBuffer {
 public:
  BackendBuffer(Backend& backend, const Bytes& host) : backend_(backend), bytes_(host.size()) {
    data_ = *backend.Allocate(bytes_);
    EXPECT_TRUE(backend.CopyFromHost(data_, host.data(), bytes_).ok());
  }
  ~BackendBuffer() { backend_.Free(data_); }
  void* get() const { return data_; }
  Bytes ToHost() const {
    Bytes out(bytes_);
    EXPECT_TRUE(backend_.CopyToHost(out.data(), data_, bytes_).ok());
    return out;
  }

 private:
  Backend& backend_;
  size_t bytes_;
  void* data_;
};

// Runs the op sequence on `backend` and returns every intermediate output's bytes.
std::vector<Bytes> RunSequence(Backend& b, DType dtype, uint64_t seed) {
  constexpr int64_t kTokens = 7, kVocab = 50, kHeads = 3, kHeadDim = 8, kD = kHeads * kHeadDim;
  constexpr int64_t kBlocks = 4, kBlockSize = 4, kMaxPos = 64;
  std::mt19937_64 rng(seed);
  const size_t es = DTypeSize(dtype);
  std::vector<int32_t> ids(kTokens), positions(kTokens), slots(kTokens), gather(kTokens);
  for (int64_t t = 0; t < kTokens; ++t) {
    ids[t] = static_cast<int32_t>(rng() % kVocab);
    positions[t] = static_cast<int32_t>(t + 3);
    slots[t] = static_cast<int32_t>((t * 5) % (kBlocks * kBlockSize));
    gather[t] = static_cast<int32_t>(kTokens - 1 - t);
  }
  RopeTableOptions ro;
  ro.rotary_dim = kHeadDim;
  ro.max_positions = kMaxPos;
  const RopeTable table = *MakeRopeTable(ro);

  BackendBuffer table_buf(b, RandomValues(kVocab * kD, dtype, rng, -1, 1));
  BackendBuffer weight(b, RandomValues(kD, dtype, rng, 0.5, 1.5));
  BackendBuffer ids_buf(b, AsBytes(ids)), pos_buf(b, AsBytes(positions));
  BackendBuffer slots_buf(b, AsBytes(slots)), gather_buf(b, AsBytes(gather));
  BackendBuffer cos_buf(b, AsBytes(table.cos)), sin_buf(b, AsBytes(table.sin));
  BackendBuffer x(b, Bytes(kTokens * kD * es)), h(b, Bytes(kTokens * kD * es));
  BackendBuffer kc(b, Bytes(kBlocks * kBlockSize * kD * es));
  BackendBuffer vc(b, Bytes(kBlocks * kBlockSize * kD * es));
  BackendBuffer act(b, Bytes(kTokens * (kD / 2) * es)), wide(b, Bytes(kTokens * kD * 4));
  BackendBuffer rows(b, Bytes(kTokens * kD * es));

  EXPECT_TRUE(b.Embedding({.tokens = kTokens, .ids = static_cast<const int32_t*>(ids_buf.get()),
                           .vocab = kVocab, .cols = kD, .dtype = dtype,
                           .table = table_buf.get(), .table_ld = kD, .out = x.get(),
                           .out_ld = kD}).ok());
  EXPECT_TRUE(b.RmsNorm({.rows = kTokens, .cols = kD, .dtype = dtype, .x = x.get(), .x_ld = kD,
                         .weight = weight.get(), .eps = 1e-6f, .out = h.get(), .out_ld = kD})
                  .ok());
  EXPECT_TRUE(b.Rope({.rows = kTokens, .heads = kHeads, .head_dim = kHeadDim,
                      .rotary_dim = kHeadDim, .style = RopeStyle::kInterleaved, .dtype = dtype,
                      .x = h.get(), .ld = kD,
                      .positions = static_cast<const int32_t*>(pos_buf.get()),
                      .cos = static_cast<const float*>(cos_buf.get()),
                      .sin = static_cast<const float*>(sin_buf.get()), .max_positions = kMaxPos})
                  .ok());
  EXPECT_TRUE(b.KvWrite({.tokens = kTokens, .kv_heads = kHeads, .head_dim = kHeadDim,
                         .dtype = dtype, .k = h.get(), .k_ld = kD, .v = x.get(), .v_ld = kD,
                         .slot_mapping = static_cast<const int32_t*>(slots_buf.get()),
                         .num_blocks = kBlocks, .block_size = kBlockSize, .k_cache = kc.get(),
                         .v_cache = vc.get()})
                  .ok());
  EXPECT_TRUE(b.Add({.n = kTokens * kD, .dtype = dtype, .a = x.get(), .b = h.get(),
                     .out = x.get()}).ok());
  EXPECT_TRUE(b.SwiGlu({.rows = kTokens, .inter = kD / 2, .dtype = dtype, .gate_up = x.get(),
                        .gate_up_ld = kD, .out = act.get(), .out_ld = kD / 2})
                  .ok());
  EXPECT_TRUE(b.Cast({.n = kTokens * kD, .src = x.get(), .src_dtype = dtype, .dst = wide.get(),
                      .dst_dtype = DType::kF32}).ok());
  EXPECT_TRUE(b.GatherRows({.rows = kTokens, .cols = kD, .dtype = dtype, .src = x.get(),
                            .src_ld = kD, .src_rows = kTokens,
                            .index = static_cast<const int32_t*>(gather_buf.get()),
                            .dst = rows.get(), .dst_ld = kD})
                  .ok());
  EXPECT_TRUE(b.Synchronize().ok());
  return {x.ToHost(), h.ToHost(), kc.ToHost(), vc.ToHost(), act.ToHost(), wide.ToHost(),
          rows.ToHost()};
}

TEST(CudaBackendOpsTest, WiredOpsMatchTheCpuBackendBitForBit) {
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  auto cpu = CreateBackend(Device::Cpu());
  auto gpu = CreateBackend(Device::Cuda(0));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (uint64_t seed : {1, 2, 3}) {
      const std::vector<Bytes> want = RunSequence(**cpu, dtype, seed);
      const std::vector<Bytes> got = RunSequence(**gpu, dtype, seed);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        SCOPED_TRACE(::testing::Message() << "output " << i << " seed " << seed);
        ExpectSameBits(got[i], want[i], i == 5 ? DType::kF32 : dtype);
      }
    }
  }
}

// Gemm with a plain and a packed B through the backend: within fp32 rounding of the CPU
// backend (the kernels differ, so the bits may), and the packed result equals the plain one.
TEST(CudaBackendOpsTest, GemmPlainAndPackedAgreeWithTheCpuBackend) {
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  auto cpu = CreateBackend(Device::Cpu());
  auto gpu = CreateBackend(Device::Cuda(0));
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  constexpr int64_t m = 5, n = 24, k = 40;
  std::mt19937_64 rng(7);
  const Bytes a_host = RandomValues(m * k, DType::kBF16, rng, -1, 1);
  const Bytes b_host = RandomValues(n * k, DType::kBF16, rng, -1, 1);
  std::vector<std::vector<float>> results;
  for (Backend* b : {cpu->get(), gpu->get()}) {
    BackendBuffer a(*b, a_host), w(*b, b_host), c(*b, Bytes(m * n * 4)), cp(*b, Bytes(m * n * 4));
    GemmArgs g{.m = m, .n = n, .k = k, .a = a.get(), .a_dtype = DType::kBF16, .lda = k,
               .b = w.get(), .b_dtype = DType::kBF16, .ldb = k, .trans_b = true, .c = c.get(),
               .c_dtype = DType::kF32, .ldc = n};
    ASSERT_TRUE(b->Gemm(g).ok());
    auto packed = b->PackWeights({.batch = 1, .k = k, .n = n, .b = w.get(),
                                  .dtype = DType::kBF16, .ldb = k, .trans_b = true});
    ASSERT_TRUE(packed.ok()) << packed.status();
    g.b = nullptr;
    g.packed_b = packed->get();
    g.c = cp.get();
    ASSERT_TRUE(b->Gemm(g).ok());
    const Bytes plain = c.ToHost(), with_packed = cp.ToHost();
    if (b == gpu->get()) ExpectSameBits(with_packed, plain, DType::kF32);
    std::vector<float> v(m * n);
    std::memcpy(v.data(), plain.data(), plain.size());
    results.push_back(v);
  }
  for (int64_t i = 0; i < m * n; ++i) EXPECT_NEAR(results[1][i], results[0][i], 1e-4) << i;
}

// A data error found on the device comes back at the next Synchronize / CopyToHost (the op
// itself does not wait), with the CPU backend's message, and only once; an earlier failed op is
// reported before a later one.
TEST(CudaBackendOpsTest, DataErrorsComeBackAsTheCpuBackendsStatus) {
  const std::string reason = NoDeviceReason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  auto gpu = CreateBackend(Device::Cuda(0));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<int32_t> ids = {1, 99};
  BackendBuffer ids_buf(**gpu, AsBytes(ids));
  BackendBuffer table(**gpu, Bytes(10 * 4 * 4));
  BackendBuffer out(**gpu, Bytes(2 * 4 * 4));
  const EmbeddingArgs bad{.tokens = 2, .ids = static_cast<const int32_t*>(ids_buf.get()),
                          .vocab = 10, .cols = 4, .dtype = DType::kF32, .table = table.get(),
                          .table_ld = 4, .out = out.get(), .out_ld = 4};
  ASSERT_TRUE((*gpu)->Embedding(bad).ok());  // deferred
  EmbeddingArgs worse = bad;
  worse.vocab = 1;  // ids[0] = 1 is now out of range too
  ASSERT_TRUE((*gpu)->Embedding(worse).ok());
  const absl::Status s = (*gpu)->Synchronize();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("ids[1]=99"), absl::string_view::npos) << s;
  EXPECT_TRUE((*gpu)->Synchronize().ok());  // reported once

  std::vector<int32_t> cpu_ids = ids;
  std::vector<float> cpu_table(40), cpu_out(8);
  EmbeddingArgs on_cpu = bad;
  on_cpu.ids = cpu_ids.data();
  on_cpu.table = cpu_table.data();
  on_cpu.out = cpu_out.data();
  auto cpu = CreateBackend(Device::Cpu());
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->Embedding(on_cpu).message(), s.message());

  ASSERT_TRUE((*gpu)->Embedding(bad).ok());
  int32_t host_id = 0;
  const absl::Status copy = (*gpu)->CopyToHost(&host_id, ids_buf.get(), sizeof(host_id));
  EXPECT_EQ(copy.message(), s.message());
}

}  // namespace
}  // namespace moe::cuda::testing
