// The CUDA Sample against the CPU backend's: ids exactly, logprobs and raw_logprobs within one
// fp32 ulp (the bound sample.h documents: libm's and CUDA's fp64 exp / log may differ in the last
// bit; in practice the bits are equal, and the test reports how many differ). Many rows, vocab
// 1..200000 (151936 included), random parameters (greedy, temperature, top-k with ties, top-p,
// min-p, repetition penalty with repeated seen ids, seeds and steps), -inf masks, and the data
// errors (NaN, +inf, an all -inf row; the first bad row wins) with the CPU's messages.
// Without a CUDA device the cases are skipped with the reason.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/registry.h"
#include "tests/unit/cuda/op_test_util.h"

namespace moe::cuda {
namespace {

using ::moe::cuda::testing::NoDeviceReason;

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Case {
  int64_t rows = 1;
  int64_t vocab = 1;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<SamplingParams> params;
  std::vector<int64_t> seen_offsets;  // empty = no history
  std::vector<int32_t> seen_ids;
};

struct Result {
  absl::Status status;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<float> raw;
};

std::string Describe(const Case& c, int64_t r) {
  const SamplingParams& p = c.params[r];
  return "row " + std::to_string(r) + " of " + std::to_string(c.rows) +
         " vocab=" + std::to_string(c.vocab) + " T=" + std::to_string(p.temperature) +
         " k=" + std::to_string(p.top_k) + " p=" + std::to_string(p.top_p) +
         " min_p=" + std::to_string(p.min_p) + " pen=" + std::to_string(p.repetition_penalty) +
         " seed=" + std::to_string(p.seed) + " step=" + std::to_string(p.step);
}

int64_t UlpDistance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = std::numeric_limits<int32_t>::min() - ia;
  if (ib < 0) ib = std::numeric_limits<int32_t>::min() - ib;
  return ia > ib ? static_cast<int64_t>(ia) - ib : static_cast<int64_t>(ib) - ia;
}

class CudaSampleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoDeviceReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend(Device::Cpu());
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(cpu).value();
    absl::StatusOr<std::unique_ptr<Backend>> gpu = CreateBackend(Device::Cuda(0));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
  }

  SampleArgs Args(const Case& c) {
    SampleArgs a;
    a.rows = c.rows;
    a.vocab = c.vocab;
    a.ld = c.vocab;
    a.params = c.params.data();
    if (!c.seen_offsets.empty()) {
      a.seen_offsets = c.seen_offsets.data();
      a.seen_ids = c.seen_ids.data();
    }
    return a;
  }

  Result RunCpu(const Case& c) {
    SampleArgs a = Args(c);
    Result res;
    res.ids.assign(c.rows, -7);
    res.logprobs.assign(c.rows, -7.0f);
    res.raw.assign(c.rows, -7.0f);
    std::vector<char> ws(cpu_->SampleWorkspaceBytes(c.rows, c.vocab));
    a.logits = c.logits.data();
    a.ids = res.ids.data();
    a.logprobs = res.logprobs.data();
    a.raw_logprobs = res.raw.data();
    a.workspace = ws.data();
    a.workspace_bytes = ws.size();
    res.status = cpu_->Sample(a);
    return res;
  }

  void* Alloc(size_t bytes) {
    absl::StatusOr<void*> p = gpu_->Allocate(bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }

  Result RunGpu(const Case& c, bool with_logprobs) {
    SampleArgs a = Args(c);
    Result res;
    res.ids.assign(c.rows, -7);
    res.logprobs.assign(c.rows, -7.0f);
    res.raw.assign(c.rows, -7.0f);
    const size_t n = static_cast<size_t>(c.rows);
    float* logits = static_cast<float*>(Alloc(c.logits.size() * sizeof(float)));
    int32_t* ids = static_cast<int32_t*>(Alloc(n * sizeof(int32_t)));
    float* lp = static_cast<float*>(Alloc(n * sizeof(float)));
    float* raw = static_cast<float*>(Alloc(n * sizeof(float)));
    a.workspace_bytes = gpu_->SampleWorkspaceBytes(c.rows, c.vocab);
    a.workspace = Alloc(a.workspace_bytes);
    EXPECT_TRUE(gpu_->CopyFromHost(logits, c.logits.data(), c.logits.size() * sizeof(float)).ok());
    EXPECT_TRUE(gpu_->CopyFromHost(ids, res.ids.data(), n * sizeof(int32_t)).ok());
    EXPECT_TRUE(gpu_->CopyFromHost(lp, res.logprobs.data(), n * sizeof(float)).ok());
    EXPECT_TRUE(gpu_->CopyFromHost(raw, res.raw.data(), n * sizeof(float)).ok());
    a.logits = logits;
    a.ids = ids;
    a.logprobs = with_logprobs ? lp : nullptr;
    a.raw_logprobs = with_logprobs ? raw : nullptr;
    res.status = gpu_->Sample(a);
    EXPECT_TRUE(gpu_->CopyToHost(res.ids.data(), ids, n * sizeof(int32_t)).ok());
    EXPECT_TRUE(gpu_->CopyToHost(res.logprobs.data(), lp, n * sizeof(float)).ok());
    EXPECT_TRUE(gpu_->CopyToHost(res.raw.data(), raw, n * sizeof(float)).ok());
    for (void* p : {static_cast<void*>(logits), static_cast<void*>(ids), static_cast<void*>(lp),
                    static_cast<void*>(raw), a.workspace}) {
      gpu_->Free(p);
    }
    return res;
  }

  void Check(const Case& c, bool with_logprobs = true) {
    const Result want = RunCpu(c);
    const Result got = RunGpu(c, with_logprobs);
    ASSERT_EQ(got.status.code(), want.status.code()) << got.status << " vs " << want.status;
    EXPECT_EQ(got.status.message(), want.status.message());
    if (!want.status.ok()) {
      for (int64_t r = 0; r < c.rows; ++r) {
        EXPECT_EQ(got.ids[r], -7) << "row " << r << " written despite the error";
      }
      return;
    }
    int64_t differing_bits = 0;
    for (int64_t r = 0; r < c.rows; ++r) {
      SCOPED_TRACE(Describe(c, r));
      ASSERT_EQ(got.ids[r], want.ids[r]);
      if (!with_logprobs) {
        EXPECT_EQ(got.logprobs[r], -7.0f);
        continue;
      }
      EXPECT_LE(UlpDistance(got.logprobs[r], want.logprobs[r]), 1)
          << got.logprobs[r] << " vs " << want.logprobs[r];
      EXPECT_LE(UlpDistance(got.raw[r], want.raw[r]), 1) << got.raw[r] << " vs " << want.raw[r];
      differing_bits += got.logprobs[r] != want.logprobs[r] || got.raw[r] != want.raw[r];
    }
    if (differing_bits > 0) {
      std::printf("vocab=%lld: %lld of %lld rows differ in the last fp32 bit\n",
                  static_cast<long long>(c.vocab), static_cast<long long>(differing_bits),
                  static_cast<long long>(c.rows));
    }
  }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> gpu_;
};

SamplingParams RandomParams(std::mt19937_64& rng, int64_t vocab) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  SamplingParams p;
  p.temperature = u(rng) < 0.2f ? 0.0f : 0.3f + 1.7f * u(rng);
  if (u(rng) < 0.5f) {
    std::uniform_int_distribution<int64_t> k(1, vocab + 2);
    p.top_k = static_cast<int32_t>(u(rng) < 0.5f ? std::min<int64_t>(k(rng), 64) : k(rng));
  }
  if (u(rng) < 0.5f) p.top_p = u(rng) < 0.1f ? 0.0001f : 0.05f + 0.9f * u(rng);
  if (u(rng) < 0.4f) p.min_p = u(rng) < 0.1f ? 1.0f : 0.3f * u(rng);
  if (u(rng) < 0.4f) p.repetition_penalty = 0.5f + 1.5f * u(rng);
  p.seed = rng();
  p.step = rng() % 1000;
  return p;
}

// Uniform logits, or (ties) quarter steps so equal values are common; masked -inf entries,
// but at least one finite per row.
Case RandomCase(std::mt19937_64& rng, int64_t rows, int64_t vocab, bool ties, float mask) {
  Case c;
  c.rows = rows;
  c.vocab = vocab;
  c.logits.resize(static_cast<size_t>(rows * vocab));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::uniform_int_distribution<int> step(0, 15);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) {
      float x = ties ? -2.0f + 0.25f * static_cast<float>(step(rng)) : -8.0f + 16.0f * u(rng);
      if (u(rng) < mask) x = -kInf;
      c.logits[r * vocab + v] = x;
    }
    c.logits[r * vocab + rng() % vocab] = ties ? 1.0f : 3.5f;
    c.params.push_back(RandomParams(rng, vocab));
  }
  if (u(rng) < 0.7f) {
    c.seen_offsets.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = rng() % 40;
      for (int64_t i = 0; i < n; ++i) {
        // Repeats are common: ids from a small range half the time.
        c.seen_ids.push_back(
            static_cast<int32_t>(rng() % (i % 2 ? vocab : std::min<int64_t>(vocab, 8))));
      }
      c.seen_offsets.push_back(static_cast<int64_t>(c.seen_ids.size()));
    }
  }
  return c;
}

TEST_F(CudaSampleTest, RandomRowsMatchTheCpuAcrossVocabSizes) {
  std::mt19937_64 rng(20261123);
  struct Shape {
    int64_t rows, vocab;
  };
  for (const Shape s : {Shape{64, 1}, Shape{64, 2}, Shape{64, 7}, Shape{48, 33}, Shape{40, 1000},
                        Shape{24, 4097}, Shape{6, 151936}, Shape{3, 200000}}) {
    for (int variant = 0; variant < 4; ++variant) {
      SCOPED_TRACE("variant " + std::to_string(variant));
      const bool ties = variant % 2 == 1;
      const float mask = variant >= 2 ? 0.3f : 0.0f;
      Check(RandomCase(rng, s.rows, s.vocab, ties, mask));
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(CudaSampleTest, EveryProcessorAloneAndWithoutLogprobs) {
  std::mt19937_64 rng(7);
  for (int which = 0; which < 6; ++which) {
    Case c = RandomCase(rng, 32, 3000, which % 2 == 0, 0.1f);
    for (SamplingParams& p : c.params) {
      p = SamplingParams();
      p.seed = rng();
      p.step = rng() % 100;
      if (which == 0) p.temperature = 0.0f;
      if (which == 1) p.top_k = static_cast<int32_t>(1 + rng() % 20);
      if (which == 2) p.top_p = 0.5f;
      if (which == 3) p.min_p = 0.05f;
      if (which == 4) p.repetition_penalty = 1.7f;
      if (which == 5) p.temperature = 0.7f;
    }
    Check(c, /*with_logprobs=*/which % 2 == 0);
  }
}

TEST_F(CudaSampleTest, TopKTiesAtTheThresholdAllStay) {
  Case c;
  c.rows = 4;
  c.vocab = 10;
  c.logits = {1,     1,     1, 1,     1, 1, 1,     1,     1, 1,  //
              0,     -0.0f, 0, 2,     2, 0, -0.0f, 0,     0, 0,  //
              -kInf, 3,     3, -kInf, 1, 1, 1,     -kInf, 3, 0,  //
              5,     4,     4, 4,     3, 3, 3,     2,     2, 2};
  for (int r = 0; r < 4; ++r) {
    SamplingParams p;
    p.top_k = 2 + r;
    p.seed = 100 + r;
    c.params.push_back(p);
  }
  Check(c);
}

TEST_F(CudaSampleTest, SeenIdsPastOneChunk) {
  std::mt19937_64 rng(11);
  Case c = RandomCase(rng, 3, 5000, false, 0.0f);
  c.seen_offsets = {0};
  c.seen_ids.clear();
  for (int64_t r = 0; r < 3; ++r) {
    c.params[r].repetition_penalty = 1.3f;
    const int64_t n = r == 1 ? 0 : 200000;
    for (int64_t i = 0; i < n; ++i) c.seen_ids.push_back(static_cast<int32_t>(rng() % 5000));
    c.seen_offsets.push_back(static_cast<int64_t>(c.seen_ids.size()));
  }
  Check(c);
}

TEST_F(CudaSampleTest, DataErrorsNameTheFirstBadRowAsTheCpu) {
  std::mt19937_64 rng(3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Bad {
    int64_t row, col;
    float value;
  };
  const std::vector<std::vector<Bad>> cases = {
      {{1, 5, nan}},
      {{2, 0, kInf}},
      {{3, 7, kInf}, {1, 9, nan}},
      {{0, 1000, nan}, {0, 3, kInf}},
  };
  for (const auto& bads : cases) {
    Case c = RandomCase(rng, 4, 1001, false, 0.0f);
    for (const Bad& b : bads) c.logits[b.row * c.vocab + b.col] = b.value;
    Check(c);
  }
  for (int64_t bad_row : {0, 2}) {
    Case c = RandomCase(rng, 4, 1001, false, 0.0f);
    for (int64_t v = 0; v < c.vocab; ++v) c.logits[bad_row * c.vocab + v] = -kInf;
    c.logits[3 * c.vocab + 4] = nan;  // a later row's NaN does not win
    Check(c);
  }
}

}  // namespace
}  // namespace moe::cuda
