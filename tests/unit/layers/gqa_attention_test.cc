#include "engine/layers/attention/gqa_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/registry.h"
#include "tests/testing/test_util.h"
#include "tests/unit/layers/layer_test_util.h"
#include "tests/testing/tolerances.h"

namespace moe::testing {
namespace {

using ::testing::HasSubstr;

enum class Family { kMixtral, kQwen3, kQwen2 };

GqaAttentionConfig SmallConfig(Family family, DType dtype) {
  GqaAttentionConfig c;
  c.hidden = 32;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  c.max_positions = 64;
  c.rms_eps = 1e-6f;
  c.dtype = dtype;
  c.sliding_window = family == Family::kMixtral ? 5 : 0;
  c.qk_norm = family == Family::kQwen3;
  c.qkv_bias = family == Family::kQwen2;
  return c;
}

// Float64 weights in HF layout, already representable in the run dtype.
struct NaiveWeights {
  std::vector<double> q, k, v, o, q_bias, k_bias, v_bias, q_norm, k_norm;
};

NaiveWeights RandomWeights(const GqaAttentionConfig& c, std::mt19937_64& rng) {
  const int64_t d = c.hidden, qr = c.heads * c.head_dim, kr = c.kv_heads * c.head_dim;
  const auto linear = [&](int64_t rows, int64_t cols) {
    std::vector<double> w = RandomUniform(rows * cols, rng);
    for (double& x : w) x *= 1.0 / std::sqrt(static_cast<double>(cols));
    return RoundTo(w, c.dtype);
  };
  const auto around = [&](int64_t n, double center, double spread) {
    std::vector<double> w = RandomUniform(n, rng);
    for (double& x : w) x = center + spread * x;
    return RoundTo(w, c.dtype);
  };
  NaiveWeights w;
  w.q = linear(qr, d);
  w.k = linear(kr, d);
  w.v = linear(kr, d);
  w.o = linear(d, qr);
  if (c.qkv_bias) {
    w.q_bias = around(qr, 0.0, 0.5);
    w.k_bias = around(kr, 0.0, 0.5);
    w.v_bias = around(kr, 0.0, 0.5);
  }
  if (c.qk_norm) {
    w.q_norm = around(c.head_dim, 1.0, 0.3);
    w.k_norm = around(c.head_dim, 1.0, 0.3);
  }
  return w;
}

// HF semantics for each sequence alone: x holds the sequences' tokens one after another
// (lengths[s] rows each); returns out in the same order.
std::vector<double> NaiveAttention(const GqaAttentionConfig& c, const NaiveWeights& w,
                                   const std::vector<double>& x,
                                   const std::vector<int64_t>& lengths) {
  const int64_t d = c.hidden, h = c.heads, kv = c.kv_heads, hd = c.head_dim;
  std::vector<double> out;
  int64_t row0 = 0;
  for (const int64_t len : lengths) {
    std::vector<std::vector<double>> qs, ks, vs;
    for (int64_t p = 0; p < len; ++p) {
      const double* xr = x.data() + (row0 + p) * d;
      std::vector<double> q = Linear(w.q, w.q_bias, xr, h * hd, d);
      std::vector<double> k = Linear(w.k, w.k_bias, xr, kv * hd, d);
      const auto norm_and_rope = [&](std::vector<double>* t, int64_t heads,
                                     const std::vector<double>& nw) {
        for (int64_t hh = 0; hh < heads; ++hh) {
          double* e = t->data() + hh * hd;
          if (c.qk_norm) {
            double ss = 0;
            for (int64_t i = 0; i < hd; ++i) ss += e[i] * e[i];
            const double inv = 1.0 / std::sqrt(ss / hd + c.rms_eps);
            for (int64_t i = 0; i < hd; ++i) e[i] = nw[i] * e[i] * inv;
          }
          for (int64_t i = 0; i < hd / 2; ++i) {
            const double angle = p * std::pow(c.rope_theta, -2.0 * i / hd);
            const double a = e[i], b = e[i + hd / 2];
            e[i] = a * std::cos(angle) - b * std::sin(angle);
            e[i + hd / 2] = b * std::cos(angle) + a * std::sin(angle);
          }
        }
      };
      norm_and_rope(&q, h, w.q_norm);
      norm_and_rope(&k, kv, w.k_norm);
      qs.push_back(q);
      ks.push_back(k);
      vs.push_back(Linear(w.v, w.v_bias, xr, kv * hd, d));
    }
    for (int64_t p = 0; p < len; ++p) {
      std::vector<double> attn(h * hd, 0.0);
      const int64_t lo = c.sliding_window > 0 ? std::max<int64_t>(0, p - c.sliding_window + 1) : 0;
      for (int64_t hh = 0; hh < h; ++hh) {
        const int64_t g = hh / (h / kv);
        std::vector<double> score;
        for (int64_t j = lo; j <= p; ++j) {
          double s = 0;
          for (int64_t i = 0; i < hd; ++i) s += qs[p][hh * hd + i] * ks[j][g * hd + i];
          score.push_back(s / std::sqrt(static_cast<double>(hd)));
        }
        const double m = *std::max_element(score.begin(), score.end());
        double sum = 0;
        for (double& s : score) sum += (s = std::exp(s - m));
        for (int64_t j = lo; j <= p; ++j) {
          for (int64_t i = 0; i < hd; ++i) {
            attn[hh * hd + i] += score[j - lo] / sum * vs[j][g * hd + i];
          }
        }
      }
      const std::vector<double> o = Linear(w.o, {}, attn.data(), d, h * hd);
      out.insert(out.end(), o.begin(), o.end());
    }
    row0 += len;
  }
  return out;
}

GqaAttentionWeights ToWeights(const GqaAttentionConfig& c, const NaiveWeights& w,
                              HostTensors* host) {
  const int64_t d = c.hidden, qr = c.heads * c.head_dim, kr = c.kv_heads * c.head_dim;
  const DType t = c.dtype;
  GqaAttentionWeights out;
  out.q_proj = host->Add(w.q, t, Shape{qr, d});
  out.k_proj = host->Add(w.k, t, Shape{kr, d});
  out.v_proj = host->Add(w.v, t, Shape{kr, d});
  out.o_proj = host->Add(w.o, t, Shape{d, qr});
  out.q_bias = host->Add(w.q_bias, t, Shape{qr});
  out.k_bias = host->Add(w.k_bias, t, Shape{kr});
  out.v_bias = host->Add(w.v_bias, t, Shape{kr});
  out.q_norm = host->Add(w.q_norm, t, Shape{c.head_dim});
  out.k_norm = host->Add(w.k_norm, t, Shape{c.head_dim});
  return out;
}

class GqaAttentionTest : public ::testing::Test {
 public:
  void SetUp() override {
    auto backend = CreateBackend(Device::Cpu());
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    allocator_ = std::make_unique<Allocator>(backend_.get());
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
  }

  DeviceTensor Upload(const void* data, size_t bytes, DType dtype, Shape shape) {
    DeviceTensor t;
    auto buffer = allocator_->Allocate(std::max<size_t>(bytes, 1));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    t.buffer = std::move(*buffer);
    EXPECT_TRUE(backend_->CopyFromHost(t.buffer->data(), data, bytes).ok());
    t.tensor = *Tensor::OnBuffer(*t.buffer, dtype, std::move(shape));
    return t;
  }
  DeviceTensor UploadValues(const std::vector<double>& v, DType dtype, Shape shape) {
    const std::vector<uint8_t> bytes = Encode(v, dtype);
    return Upload(bytes.data(), bytes.size(), dtype, std::move(shape));
  }
  DeviceTensor UploadInts(const std::vector<int32_t>& v, Shape shape) {
    return Upload(v.data(), v.size() * sizeof(int32_t), DType::kI32, std::move(shape));
  }
  std::vector<double> Download(const Tensor& t) {
    std::vector<uint8_t> bytes(t.nbytes());
    EXPECT_TRUE(backend_->CopyToHost(bytes.data(), t.data(), bytes.size()).ok());
    return Decode(bytes.data(), t.numel(), t.dtype());
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Allocator> allocator_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// A paged cache for a few sequences, blocks handed out in a shuffled order, and Forward over
// any list of (sequence, position) tokens.
class CacheRunner {
 public:
  static constexpr int64_t kBlockSize = 4;

  CacheRunner(GqaAttentionTest* test, GqaAttention* layer, const std::vector<int64_t>& lengths,
              std::mt19937_64& rng)
      : test_(test), layer_(layer), lengths_(lengths) {
    const GqaAttentionConfig& c = layer->config();
    max_blocks_ = 0;
    int64_t total = 0;
    for (const int64_t len : lengths) {
      max_blocks_ = std::max(max_blocks_, (len + kBlockSize - 1) / kBlockSize);
      total += (len + kBlockSize - 1) / kBlockSize;
    }
    num_blocks_ = total + 2;
    std::vector<int32_t> ids(num_blocks_);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    tables_.assign(lengths.size() * max_blocks_, -1);
    int64_t next = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      for (int64_t b = 0; b < (lengths[s] + kBlockSize - 1) / kBlockSize; ++b) {
        tables_[s * max_blocks_ + b] = ids[next++];
      }
    }
    const int64_t n = num_blocks_ * kBlockSize * c.kv_heads * c.head_dim;
    const Shape shape{num_blocks_, kBlockSize, c.kv_heads, c.head_dim};
    k_ = test->UploadValues(std::vector<double>(n, 0.0), c.dtype, shape);
    v_ = test->UploadValues(std::vector<double>(n, 0.0), c.dtype, shape);
    block_tables_ =
        test->UploadInts(tables_, Shape{static_cast<int64_t>(lengths.size()), max_blocks_});
  }

  // x: all tokens of all sequences, sequence after sequence. Runs one Forward over `tokens`
  // and stores each token's output row into *out (same order as x).
  absl::Status Run(const std::vector<std::pair<int, int>>& tokens, const std::vector<double>& x,
                   std::vector<double>* out) {
    const GqaAttentionConfig& c = layer_->config();
    const int64_t d = c.hidden, t = tokens.size();
    std::vector<double> xs;
    std::vector<int32_t> positions, seq_ids, slots;
    std::vector<int64_t> rows;
    for (const auto& [s, p] : tokens) {
      int64_t row = p;
      for (int i = 0; i < s; ++i) row += lengths_[i];
      rows.push_back(row);
      xs.insert(xs.end(), x.begin() + row * d, x.begin() + (row + 1) * d);
      positions.push_back(p);
      seq_ids.push_back(s);
      slots.push_back(tables_[s * max_blocks_ + p / kBlockSize] * kBlockSize + p % kBlockSize);
    }
    DeviceTensor dx = test_->UploadValues(xs, c.dtype, Shape{t, d});
    DeviceTensor dout = test_->UploadValues(std::vector<double>(t * d, 0.0), c.dtype, Shape{t, d});
    DeviceTensor dpos = test_->UploadInts(positions, Shape{t});
    DeviceTensor dseq = test_->UploadInts(seq_ids, Shape{t});
    DeviceTensor dslot = test_->UploadInts(slots, Shape{t});
    GqaAttentionBatch batch{dpos.tensor, dseq.tensor, dslot.tensor, block_tables_.tensor};
    const absl::Status status = layer_->Forward(dx.tensor, batch, cache(), dout.tensor);
    if (!status.ok()) return status;
    const std::vector<double> got = test_->Download(dout.tensor);
    out->resize(x.size());
    for (int64_t i = 0; i < t; ++i) {
      std::copy(got.begin() + i * d, got.begin() + (i + 1) * d, out->begin() + rows[i] * d);
    }
    return absl::OkStatus();
  }

  KvCacheView cache() const { return KvCacheView{k_.tensor, v_.tensor}; }

 private:
  GqaAttentionTest* test_;
  GqaAttention* layer_;
  std::vector<int64_t> lengths_;
  int64_t max_blocks_ = 0;
  int64_t num_blocks_ = 0;
  std::vector<int32_t> tables_;
  DeviceTensor k_, v_, block_tables_;
};

class GqaAttentionReferenceTest : public GqaAttentionTest,
                                  public ::testing::WithParamInterface<std::tuple<Family, DType>> {
};

TEST_P(GqaAttentionReferenceTest, PrefillAndDecodeMatchNaive) {
  const auto [family, dtype] = GetParam();
  const GqaAttentionConfig c = SmallConfig(family, dtype);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  auto layer = GqaAttention::Create(c, ToWeights(c, w, &host), backend_.get(), allocator_.get());
  ASSERT_TRUE(layer.ok()) << layer.status();

  const std::vector<int64_t> lengths = {9, 3, 12};  // ragged; 9 and 12 exceed Mixtral's window 5
  const std::vector<int64_t> prefix = {5, 1, 6};
  const int64_t total = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  const std::vector<double> x = RoundTo(RandomUniform(total * c.hidden, rng_), dtype);
  const std::vector<double> want = NaiveAttention(c, w, x, lengths);

  // (a) every token in one prefill call.
  std::vector<double> prefill;
  {
    CacheRunner runner(this, layer->get(), lengths, rng_);
    std::vector<std::pair<int, int>> tokens;
    for (int s = 0; s < 3; ++s) {
      for (int p = 0; p < lengths[s]; ++p) tokens.push_back({s, p});
    }
    ASSERT_TRUE(runner.Run(tokens, x, &prefill).ok());
  }
  // (b) prefill of a prefix, then one decode token per unfinished sequence per call.
  std::vector<double> decode(x.size(), 0.0);
  {
    CacheRunner runner(this, layer->get(), lengths, rng_);
    std::vector<std::pair<int, int>> tokens;
    for (int s = 0; s < 3; ++s) {
      for (int p = 0; p < prefix[s]; ++p) tokens.push_back({s, p});
    }
    std::vector<double> step_out;
    ASSERT_TRUE(runner.Run(tokens, x, &step_out).ok());
    const auto keep = [&](const std::vector<std::pair<int, int>>& toks) {
      for (const auto& [s, p] : toks) {
        int64_t row = p;
        for (int i = 0; i < s; ++i) row += lengths[i];
        for (int64_t j = 0; j < c.hidden; ++j) {
          decode[row * c.hidden + j] = step_out[row * c.hidden + j];
        }
      }
    };
    keep(tokens);
    for (int step = 0;; ++step) {
      tokens.clear();
      for (int s = 0; s < 3; ++s) {
        if (prefix[s] + step < lengths[s])
          tokens.push_back({s, static_cast<int>(prefix[s] + step)});
      }
      if (tokens.empty()) break;
      ASSERT_TRUE(runner.Run(tokens, x, &step_out).ok());
      keep(tokens);
    }
  }

  const double tol = BlockTol(dtype);
  EXPECT_LT(MaxRelError(prefill, want), tol);
  EXPECT_LT(MaxRelError(decode, want), tol);
  // Same rounded inputs, same ops; only the GEMM's m differs.
  EXPECT_LT(MaxRelError(decode, prefill), dtype == DType::kF32 ? 2e-6 : kOpTolBf16)
      << "decode vs prefill";
  std::cerr << "prefill err " << MaxRelError(prefill, want) << " decode err "
            << MaxRelError(decode, want) << " decode vs prefill " << MaxRelError(decode, prefill)
            << "\n";
}

std::string ParamName(const ::testing::TestParamInfo<std::tuple<Family, DType>>& info) {
  const char* family[] = {"Mixtral", "Qwen3", "Qwen2"};
  return absl::StrCat(family[static_cast<int>(std::get<0>(info.param))], "_",
                      std::get<1>(info.param) == DType::kF32 ? "f32" : "bf16");
}

INSTANTIATE_TEST_SUITE_P(All, GqaAttentionReferenceTest,
                         ::testing::Combine(::testing::Values(Family::kMixtral, Family::kQwen3,
                                                              Family::kQwen2),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         ParamName);

TEST_F(GqaAttentionTest, ForwardAllocatesNothingAfterReserve) {
  const GqaAttentionConfig c = SmallConfig(Family::kQwen2, DType::kBF16);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  auto layer = GqaAttention::Create(c, ToWeights(c, w, &host), backend_.get(), allocator_.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  ASSERT_TRUE((*layer)->ReserveTokens(4).ok());
  const std::vector<int64_t> lengths = {4};
  CacheRunner runner(this, layer->get(), lengths, rng_);
  const std::vector<double> x = RoundTo(RandomUniform(4 * c.hidden, rng_), c.dtype);
  std::vector<double> out;
  // Inputs are uploaded inside Run, so count around the Forward only via a second identical
  // run: the layer's own allocations would show up as a difference between the two.
  ASSERT_TRUE(runner.Run({{0, 0}, {0, 1}}, x, &out).ok());
  const int64_t before = allocator_->allocation_count();
  ASSERT_TRUE(runner.Run({{0, 2}, {0, 3}}, x, &out).ok());
  EXPECT_EQ(allocator_->allocation_count() - before, 5);  // Run's own x, out and 3 int uploads
}

TEST_F(GqaAttentionTest, ConfigErrorsNameTheField) {
  GqaAttentionConfig c = SmallConfig(Family::kMixtral, DType::kF32);
  ASSERT_TRUE(c.Validate().ok());
  c.heads = 5;
  EXPECT_THAT(std::string(c.Validate().message()),
              HasSubstr("attention: heads=5 is not a multiple of kv_heads=2"));
  c = SmallConfig(Family::kMixtral, DType::kF32);
  c.kv_heads = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("kv_heads=0 must be > 0"));
  c = SmallConfig(Family::kMixtral, DType::kF32);
  c.head_dim = 7;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("head_dim=7 must be even"));
  c = SmallConfig(Family::kMixtral, DType::kF32);
  c.sliding_window = -1;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("sliding_window=-1"));
  c = SmallConfig(Family::kMixtral, DType::kF32);
  c.max_positions = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("max_positions=0"));
  c = SmallConfig(Family::kMixtral, DType::kF32);
  c.dtype = DType::kI32;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("dtype="));
}

TEST_F(GqaAttentionTest, WeightErrorsNameTheTensor) {
  const GqaAttentionConfig c = SmallConfig(Family::kQwen3, DType::kF32);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  GqaAttentionWeights good = ToWeights(c, w, &host);
  GqaAttentionWeights bad = good;
  bad.k_norm = Tensor();
  auto layer = GqaAttention::Create(c, bad, backend_.get(), allocator_.get());
  EXPECT_THAT(std::string(layer.status().message()), HasSubstr("attention: k_norm is missing"));
  bad = good;
  bad.k_proj = host.Add(std::vector<double>(3 * c.hidden, 0.0), DType::kF32, Shape{3, c.hidden});
  layer = GqaAttention::Create(c, bad, backend_.get(), allocator_.get());
  EXPECT_THAT(std::string(layer.status().message()),
              HasSubstr("attention: k_proj has shape [3, 32], expected [16, 32]"));
  bad = good;
  bad.q_bias = host.Add(std::vector<double>(32, 0.0), DType::kF32, Shape{32});
  layer = GqaAttention::Create(c, bad, backend_.get(), allocator_.get());
  EXPECT_THAT(std::string(layer.status().message()), HasSubstr("q_bias is given"));
}

TEST_F(GqaAttentionTest, ForwardErrorsNameTheTensor) {
  const GqaAttentionConfig c = SmallConfig(Family::kMixtral, DType::kF32);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  auto layer = GqaAttention::Create(c, ToWeights(c, w, &host), backend_.get(), allocator_.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  CacheRunner runner(this, layer->get(), {4}, rng_);
  DeviceTensor x =
      UploadValues(std::vector<double>(2 * c.hidden, 0.0), DType::kF32, Shape{2, c.hidden});
  DeviceTensor out =
      UploadValues(std::vector<double>(2 * c.hidden, 0.0), DType::kF32, Shape{2, c.hidden});
  DeviceTensor ints = UploadInts({0, 1}, Shape{2});
  DeviceTensor three = UploadInts({0, 1, 2}, Shape{3});
  DeviceTensor seqs = UploadInts({0, 0}, Shape{2});
  DeviceTensor tables = UploadInts({0}, Shape{1, 1});
  GqaAttentionBatch batch{ints.tensor, seqs.tensor, ints.tensor, tables.tensor};
  const absl::Status ok = (*layer)->Forward(x.tensor, batch, runner.cache(), out.tensor);
  EXPECT_TRUE(ok.ok()) << ok;

  GqaAttentionBatch b = batch;
  b.positions = three.tensor;
  EXPECT_THAT(std::string((*layer)->Forward(x.tensor, b, runner.cache(), out.tensor).message()),
              HasSubstr("attention: positions has shape [3], expected [2 (x's rows)]"));
  b = batch;
  b.slot_mapping = x.tensor;
  EXPECT_THAT(std::string((*layer)->Forward(x.tensor, b, runner.cache(), out.tensor).message()),
              HasSubstr("slot_mapping has shape"));
  KvCacheView cache = runner.cache();
  cache.v = x.tensor;
  EXPECT_THAT(std::string((*layer)->Forward(x.tensor, batch, cache, out.tensor).message()),
              HasSubstr("cache.v has shape [2, 32]"));
  EXPECT_THAT(std::string((*layer)->Forward(x.tensor, batch, runner.cache(), x.tensor).message()),
              HasSubstr("out overlaps x"));
  // A position beyond the RoPE table comes back from the backend.
  DeviceTensor far = UploadInts({0, static_cast<int32_t>(c.max_positions)}, Shape{2});
  b = batch;
  b.positions = far.tensor;
  EXPECT_FALSE((*layer)->Forward(x.tensor, b, runner.cache(), out.tensor).ok());
}

}  // namespace
}  // namespace moe::testing
