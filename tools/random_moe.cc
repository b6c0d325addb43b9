#include "tools/random_moe.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "kernels/status_macros.h"

namespace moe::tools {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) from 24 random bits: exact in f32, and bf16 rounding keeps it in range.
inline float UnitUniform(uint64_t key, int64_t i) {
  const uint64_t h = SplitMix64(key + static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull);
  return static_cast<float>(static_cast<int64_t>(h >> 40) - (1 << 23)) * (1.0f / (1 << 23));
}

// Tensor streams: fixed ids so adding a tensor never changes the others.
constexpr uint64_t kStreamGate = 1;
constexpr uint64_t kStreamBias = 2;
constexpr uint64_t kStreamSharedW1 = 3;
constexpr uint64_t kStreamSharedW3 = 4;
constexpr uint64_t kStreamSharedW2 = 5;
constexpr uint64_t kStreamSharedGate = 6;
constexpr uint64_t kStreamActivation = 7;
constexpr uint64_t kStreamExpertBase = 1000;  // + 3 * expert + {0: w1, 1: w3, 2: w2}

}  // namespace

absl::Status FillUniform(const Tensor& t, uint64_t seed, uint64_t stream, float bound) {
  const uint64_t key = SplitMix64(SplitMix64(seed) ^ (stream * 0x9e3779b97f4a7c15ull));
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32: {
      float* p = static_cast<float*>(t.data());
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) p[i] = bound * UnitUniform(key, i);
      return absl::OkStatus();
    }
    case DType::kBF16: {
      bf16* p = static_cast<bf16*>(t.data());
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) p[i] = FloatToBf16(bound * UnitUniform(key, i));
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("FillUniform: dtype ", DTypeName(t.dtype()), " is not f32 or bf16"));
  }
}

absl::StatusOr<Tensor> RandomMoeWeights::NewTensor(DType dtype, Shape shape, bool expert) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> buffer,
                       allocator_->Allocate(static_cast<size_t>(shape.numel() * DTypeSize(dtype))));
  MOE_ASSIGN_OR_RETURN(Tensor t, Tensor::OnBuffer(*buffer, dtype, std::move(shape)));
  (expert ? expert_buffers_ : small_buffers_).push_back(std::move(buffer));
  return t;
}

absl::StatusOr<std::unique_ptr<RandomMoeWeights>> RandomMoeWeights::Create(const MoeConfig& config,
                                                                           uint64_t seed,
                                                                           Allocator* allocator) {
  std::unique_ptr<RandomMoeWeights> r(new RandomMoeWeights());
  r->allocator_ = allocator;
  const DType dt = config.dtype;
  const int64_t e = config.num_experts;
  const int64_t d = config.hidden;
  const int64_t i = config.inter;
  const float in_bound = 1.0f / std::sqrt(static_cast<float>(d));
  const float inter_bound = 1.0f / std::sqrt(static_cast<float>(i));
  MoeWeights& w = r->weights_;

  MOE_ASSIGN_OR_RETURN(w.gate, r->NewTensor(dt, Shape{e, d}, false));
  MOE_RETURN_IF_ERROR(FillUniform(w.gate, seed, kStreamGate, in_bound));
  if (config.use_expert_bias) {
    MOE_ASSIGN_OR_RETURN(w.expert_bias, r->NewTensor(DType::kF32, Shape{e}, false));
    MOE_RETURN_IF_ERROR(FillUniform(w.expert_bias, seed, kStreamBias, 0.05f));
  }
  for (int64_t x = 0; x < e; ++x) {
    const uint64_t stream = kStreamExpertBase + 3 * static_cast<uint64_t>(x);
    MOE_ASSIGN_OR_RETURN(Tensor w1, r->NewTensor(dt, Shape{i, d}, true));
    MOE_ASSIGN_OR_RETURN(Tensor w3, r->NewTensor(dt, Shape{i, d}, true));
    MOE_ASSIGN_OR_RETURN(Tensor w2, r->NewTensor(dt, Shape{d, i}, true));
    MOE_RETURN_IF_ERROR(FillUniform(w1, seed, stream, in_bound));
    MOE_RETURN_IF_ERROR(FillUniform(w3, seed, stream + 1, in_bound));
    MOE_RETURN_IF_ERROR(FillUniform(w2, seed, stream + 2, inter_bound));
    w.w1.push_back(w1);
    w.w3.push_back(w3);
    w.w2.push_back(w2);
  }
  const int64_t s = config.num_shared_experts * config.shared_inter;
  if (s > 0) {
    const float shared_bound = 1.0f / std::sqrt(static_cast<float>(s));
    MOE_ASSIGN_OR_RETURN(w.shared_w1, r->NewTensor(dt, Shape{s, d}, true));
    MOE_ASSIGN_OR_RETURN(w.shared_w3, r->NewTensor(dt, Shape{s, d}, true));
    MOE_ASSIGN_OR_RETURN(w.shared_w2, r->NewTensor(dt, Shape{d, s}, true));
    MOE_RETURN_IF_ERROR(FillUniform(w.shared_w1, seed, kStreamSharedW1, in_bound));
    MOE_RETURN_IF_ERROR(FillUniform(w.shared_w3, seed, kStreamSharedW3, in_bound));
    MOE_RETURN_IF_ERROR(FillUniform(w.shared_w2, seed, kStreamSharedW2, shared_bound));
    if (config.shared_gate) {
      MOE_ASSIGN_OR_RETURN(w.shared_gate, r->NewTensor(dt, Shape{1, d}, false));
      MOE_RETURN_IF_ERROR(FillUniform(w.shared_gate, seed, kStreamSharedGate, in_bound));
    }
  }
  return r;
}

void RandomMoeWeights::ReleaseExperts() {
  // Rebuilt rather than reset member by member: only the small tensors survive.
  std::unique_ptr<MoeWeights> kept = std::make_unique<MoeWeights>();
  kept->gate = weights_.gate;
  kept->expert_bias = weights_.expert_bias;
  kept->shared_gate = weights_.shared_gate;
  weights_.w1.clear();
  weights_.w3.clear();
  weights_.w2.clear();
  std::swap(weights_, *kept);
  expert_buffers_.clear();
}

int64_t RandomMoeWeights::bytes() const {
  int64_t total = 0;
  for (const auto& b : small_buffers_) total += static_cast<int64_t>(b->size());
  for (const auto& b : expert_buffers_) total += static_cast<int64_t>(b->size());
  return total;
}

absl::StatusOr<RandomActivation> MakeRandomActivation(int64_t tokens, int64_t hidden, DType dtype,
                                                      uint64_t seed, Allocator* allocator) {
  RandomActivation a;
  MOE_ASSIGN_OR_RETURN(
      a.buffer, allocator->Allocate(static_cast<size_t>(tokens * hidden * DTypeSize(dtype))));
  MOE_ASSIGN_OR_RETURN(a.tensor, Tensor::OnBuffer(*a.buffer, dtype, Shape{tokens, hidden}));
  MOE_RETURN_IF_ERROR(FillUniform(a.tensor, seed, kStreamActivation, 1.0f));
  return a;
}

uint64_t Checksum(const Tensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.data());
  uint64_t h = 0xcbf29ce484222325ull;
  for (int64_t i = 0; i < t.nbytes(); ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

TensorStats ComputeStats(const Tensor& t) {
  TensorStats s;
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    double v = 0.0;
    if (t.dtype() == DType::kF32) {
      v = static_cast<const float*>(t.data())[i];
    } else if (t.dtype() == DType::kBF16) {
      v = Bf16ToFloat(static_cast<const bf16*>(t.data())[i]);
    }
    if (!std::isfinite(v)) {
      ++s.non_finite;
      continue;
    }
    s.sum += v;
    s.l2 += v * v;
    s.max_abs = std::max(s.max_abs, std::fabs(v));
  }
  s.l2 = std::sqrt(s.l2);
  return s;
}

}  // namespace moe::tools
