#include "engine/model/tensor_source.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/model/checkpoint_staging.h"

namespace moe {
namespace {

class CheckpointTensorStaging : public TensorStaging {
 public:
  explicit CheckpointTensorStaging(const SafetensorsCheckpoint& checkpoint)
      : checkpoint_(checkpoint) {}
  absl::StatusOr<Tensor> Load(const ExpectedTensor& want) override {
    return staging_.Load(checkpoint_, want);
  }

 private:
  const SafetensorsCheckpoint& checkpoint_;
  CheckpointStaging staging_;
};

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;  // splitmix64's increment
constexpr uint64_t kRouterKey = 0x726f75746572ull;  // "router"
constexpr size_t kAlign = 64;

// splitmix64's finaliser.
inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// 16 random bits -> uniform in (-1, 1).
inline float Uniform(uint16_t b) { return (static_cast<float>(b) - 32767.5f) * (1.0f / 32768.0f); }

// Element i of the stream `key` as u in (-1, 1) (scalar; the fill computes the same in blocks).
float UniformAt(uint64_t key, int64_t i) {
  const uint64_t w = Mix(key + static_cast<uint64_t>(i / 4 + 1) * kGamma);
  return Uniform(static_cast<uint16_t>(w >> (16 * (i % 4))));
}

// Groups of 4 elements (one hash word) per block: a block's words are hashed first, then its
// elements converted in a loop the compiler vectorises.
constexpr int64_t kBlockGroups = 256;

// out[i] = store(offset + scale_i * u_i) for i in [0, n); scale_i = scale, or
// row_scale[i / cols] when kPerRow.
template <bool kPerRow, typename T, typename Store>
void FillStream(T* out, int64_t n, uint64_t key, float offset, float scale,
                const float* row_scale, int64_t cols, Store store) {
  const int64_t groups = (n + 3) / 4;
  const int64_t blocks = (groups + kBlockGroups - 1) / kBlockGroups;
#pragma omp parallel for schedule(static) if (blocks > 16)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t g0 = b * kBlockGroups;
    const int64_t ng = std::min(kBlockGroups, groups - g0);
    uint16_t bits[4 * kBlockGroups];
    for (int64_t k = 0; k < ng; ++k) {
      const uint64_t w = Mix(key + static_cast<uint64_t>(g0 + k + 1) * kGamma);
      bits[4 * k] = static_cast<uint16_t>(w);
      bits[4 * k + 1] = static_cast<uint16_t>(w >> 16);
      bits[4 * k + 2] = static_cast<uint16_t>(w >> 32);
      bits[4 * k + 3] = static_cast<uint16_t>(w >> 48);
    }
    const int64_t e0 = 4 * g0;
    const int64_t ne = std::min<int64_t>(4 * ng, n - e0);
    T* o = out + e0;
    if constexpr (kPerRow) {
#pragma omp simd
      for (int64_t i = 0; i < ne; ++i) {
        o[i] = store(offset + row_scale[(e0 + i) / cols] * Uniform(bits[i]));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < ne; ++i) o[i] = store(offset + scale * Uniform(bits[i]));
    }
  }
}

template <bool kPerRow>
void FillAs(DType dtype, void* out, int64_t n, uint64_t key, float offset, float scale,
            const float* row_scale, int64_t cols) {
  switch (dtype) {
    case DType::kF32:
      FillStream<kPerRow>(static_cast<float*>(out), n, key, offset, scale, row_scale, cols,
                          [](float v) { return v; });
      break;
    case DType::kBF16:
      FillStream<kPerRow>(static_cast<uint16_t*>(out), n, key, offset, scale, row_scale, cols,
                          [](float v) { return FloatToBf16(v).bits; });
      break;
    case DType::kF16:
      FillStream<kPerRow>(static_cast<uint16_t*>(out), n, key, offset, scale, row_scale, cols,
                          [](float v) { return FloatToF16(v).bits; });
      break;
    default:
      break;
  }
}

bool IsWeightDType(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

class RandomTensorStaging : public TensorStaging {
 public:
  explicit RandomTensorStaging(const RandomTensorSource& source) : source_(source) {}
  ~RandomTensorStaging() override {
    source_.ReturnSlabs(slabs_);
    for (void* p : large_) std::free(p);
  }

  absl::StatusOr<Tensor> Load(const ExpectedTensor& want) override {
    const DType dtype = source_.dtype();
    if (!IsWeightDType(dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("random weights: tensor \"", want.name, "\" cannot be drawn in dtype ",
                       DTypeName(dtype), " (f32, bf16 or f16)"));
    }
    const size_t bytes =
        static_cast<size_t>(want.shape.numel()) * static_cast<size_t>(DTypeSize(dtype));
    void* data = Allocate(bytes);
    if (data == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "random weights: no host memory for tensor \"", want.name, "\" (", bytes, " bytes)"));
    }
    RandomTensorSource::Fill(source_.seed(), want, dtype, data);
    return Tensor::Wrap(data, Device::Cpu(), dtype, want.shape);
  }

 private:
  // 64-byte aligned memory for `bytes`, valid until destruction; nullptr when none is left.
  void* Allocate(size_t bytes) {
    const size_t size = RoundUp(std::max<size_t>(bytes, 1), kAlign);
    if (size > RandomTensorSource::kSlabBytes) {
      void* p = std::aligned_alloc(kAlign, size);
      if (p != nullptr) large_.push_back(p);
      return p;
    }
    if (slabs_.empty() || used_ + size > RandomTensorSource::kSlabBytes) {
      void* slab = source_.TakeSlab();
      if (slab == nullptr) return nullptr;
      slabs_.push_back(slab);
      used_ = 0;
    }
    void* p = static_cast<uint8_t*>(slabs_.back()) + used_;
    used_ += size;
    return p;
  }

  const RandomTensorSource& source_;
  std::vector<void*> slabs_;  // from the source, given back at destruction
  size_t used_ = 0;           // bytes used of slabs_.back()
  std::vector<void*> large_;  // tensors larger than a slab
};

std::unique_ptr<TensorStaging> CheckpointTensorSource::NewStaging() const {
  return std::make_unique<CheckpointTensorStaging>(checkpoint_);
}

RandomTensorSource::~RandomTensorSource() {
  for (void* p : free_slabs_) std::free(p);
}

std::unique_ptr<TensorStaging> RandomTensorSource::NewStaging() const {
  return std::make_unique<RandomTensorStaging>(*this);
}

void* RandomTensorSource::TakeSlab() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_slabs_.empty()) {
      void* p = free_slabs_.back();
      free_slabs_.pop_back();
      return p;
    }
  }
  return std::aligned_alloc(kAlign, kSlabBytes);
}

void RandomTensorSource::ReturnSlabs(const std::vector<void*>& slabs) const {
  std::lock_guard<std::mutex> lock(mu_);
  free_slabs_.insert(free_slabs_.end(), slabs.begin(), slabs.end());
}

void RandomTensorSource::Fill(uint64_t seed, const ExpectedTensor& want, DType dtype, void* out) {
  const int64_t n = want.shape.numel();
  if (n <= 0 || !IsWeightDType(dtype)) return;
  const uint64_t key = Mix(Mix(seed) ^ Fnv1a64(want.name));
  const int64_t in = want.shape.rank() >= 2 ? want.shape.dim(want.shape.rank() - 1) : 1;
  const float linear = 1.0f / std::sqrt(static_cast<float>(in));
  float offset = 0.0f, scale = linear;
  switch (want.role) {
    case TensorRole::kEmbedding:
      scale = 0.02f * std::sqrt(3.0f);
      break;
    case TensorRole::kNorm:
      offset = 1.0f;
      scale = 0.1f;
      break;
    case TensorRole::kAttentionBias:
      scale = 0.02f;
      break;
    case TensorRole::kRouterBias:
      scale = 0.01f;
      break;
    case TensorRole::kRouter: {
      const int64_t rows = n / in;
      std::vector<float> row_scale(rows);
      const uint64_t row_key = Mix(key ^ kRouterKey);
      for (int64_t e = 0; e < rows; ++e) {
        row_scale[e] = kRandomRouterGain * linear *
                       std::exp(kRandomRouterSpread * std::sqrt(3.0f) * UniformAt(row_key, e));
      }
      FillAs<true>(dtype, out, n, key, 0.0f, 0.0f, row_scale.data(), in);
      return;
    }
    default:  // linear weights: attention, experts, shared experts and gate, dense MLP, lm_head
      break;
  }
  FillAs<false>(dtype, out, n, key, offset, scale, nullptr, 1);
}

DType RandomWeightDType(const ModelConfig& config) {
  return config.has_dtype && IsWeightDType(config.dtype) ? config.dtype : DType::kBF16;
}

}  // namespace moe
