// The MLA attention layer (DeepSeek-V3) against a float64 naive MLA written here with Hugging
// Face semantics (DeepseekV3Attention, eager: de-interleaving RoPE, YaRN inv_freq and mscale in
// double), over odd and round shapes, q_lora_rank > 0 and = 0, interleaved and rotate_half RoPE,
// YaRN and default RoPE, with and without biases; prefill, chunked prefill mixed with decode,
// and step-wise decode give the same bits; thread counts give the same bits; errors name the
// field or tensor.
#include "engine/layers/attention/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
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

namespace moe::testing {
namespace {

using ::testing::HasSubstr;

// MaxRelError of the layer against the float64 reference. f32: a few GEMMs, two RMSNorms,
// RoPE from fp32 tables and the softmax, all fp32. bf16: the run rounds to bf16 after each of
// the x GEMM, both norms, q_b_proj, kv_b_proj, RoPE, attention and o_proj (eight roundings of
// 2^-9 relative in a chain, amplified by the softmax). Measured over 30 seeds of every case:
// f32 up to 7e-7, bf16 up to 8e-3; a softmax scale without the YaRN mscale costs 3.6e-2.
constexpr double kMlaTolF32 = 1e-5;
constexpr double kMlaTolBf16 = 2e-2;
double MlaTol(DType t) { return t == DType::kBF16 ? kMlaTolBf16 : kMlaTolF32; }

struct Case {
  const char* name;
  int64_t hidden, heads, q_lora, kv_lora, nope, rope, v;
  bool bias, interleave, yarn;
  double mscale, mscale_all_dim;
};

const Case kCases[] = {
    // DeepSeek-V3's structure at round sizes: LoRA q, interleaved YaRN with both mscales.
    {"RoundLoraInterleaveYarn", 32, 4, 16, 16, 8, 8, 8, false, true, true, 1.0, 0.8},
    {"OddLoraHalfDefaultBias", 19, 3, 7, 9, 6, 4, 5, true, false, false, 0, 0},
    // mscale absent (0) with mscale_all_dim set: HF's attention factor is get_mscale(factor).
    {"OddNoLoraInterleaveYarnBias", 19, 3, 0, 9, 6, 4, 5, true, true, true, 0.0, 1.0},
    // mscale_all_dim absent: no softmax mscale, attention factor get_mscale(factor).
    {"RoundNoLoraHalfYarn", 32, 4, 0, 16, 16, 8, 16, false, false, true, 0.7, 0.0},
    // v_head_dim == qk_head_dim, the limit: no padding.
    {"OddLoraInterleaveDefaultFullV", 21, 3, 7, 9, 6, 4, 10, true, true, false, 0, 0},
};

MlaAttentionConfig MakeConfig(const Case& k, DType dtype) {
  MlaAttentionConfig c;
  c.hidden = k.hidden;
  c.heads = k.heads;
  c.q_lora_rank = k.q_lora;
  c.kv_lora_rank = k.kv_lora;
  c.qk_nope_head_dim = k.nope;
  c.qk_rope_head_dim = k.rope;
  c.v_head_dim = k.v;
  c.attention_bias = k.bias;
  c.rope_interleave = k.interleave;
  c.rope_theta = k.yarn ? 10000.0 : 500.0;
  if (k.yarn) {
    c.rope_type = RopeScalingType::kYarn;
    c.yarn_factor = 4.0;
    c.original_max_position_embeddings = 16;
    c.beta_fast = 32.0;
    c.beta_slow = 1.0;
    c.mscale = k.mscale;
    c.mscale_all_dim = k.mscale_all_dim;
  }
  c.max_positions = 64;
  c.rms_eps = 1e-6f;
  c.dtype = dtype;
  return c;
}

// Float64 weights in HF layout, already representable in the run dtype.
struct NaiveWeights {
  std::vector<double> q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o, q_a_bias, kv_a_bias, o_bias;
};

NaiveWeights RandomWeights(const MlaAttentionConfig& c, std::mt19937_64& rng) {
  const int64_t d = c.hidden, h = c.heads, qk = c.qk_head_dim();
  const auto linear = [&](int64_t rows, int64_t cols) {
    std::vector<double> w = RandomUniform(rows * cols, rng);
    for (double& x : w) x *= 1.7 / std::sqrt(static_cast<double>(cols));
    return RoundTo(w, c.dtype);
  };
  const auto around = [&](int64_t n, double center, double spread) {
    std::vector<double> w = RandomUniform(n, rng);
    for (double& x : w) x = center + spread * x;
    return RoundTo(w, c.dtype);
  };
  NaiveWeights w;
  if (c.q_lora_rank > 0) {
    w.q_a = linear(c.q_lora_rank, d);
    w.q_a_norm = around(c.q_lora_rank, 1.0, 0.3);
    w.q_b = linear(h * qk, c.q_lora_rank);
  } else {
    w.q = linear(h * qk, d);
  }
  w.kv_a = linear(c.kv_lora_rank + c.qk_rope_head_dim, d);
  w.kv_a_norm = around(c.kv_lora_rank, 1.0, 0.3);
  w.kv_b = linear(h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  w.o = linear(d, h * c.v_head_dim);
  if (c.attention_bias) {
    if (c.q_lora_rank > 0) w.q_a_bias = around(c.q_lora_rank, 0.0, 0.5);
    w.kv_a_bias = around(c.kv_lora_rank + c.qk_rope_head_dim, 0.0, 0.5);
    w.o_bias = around(d, 0.0, 0.5);
  }
  return w;
}

void RmsNorm(const std::vector<double>& w, double eps, double* x, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = w[i] * (x[i] * inv);
}

double GetMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// HF's rope init in double: default, or _compute_yarn_parameters. Returns inv_freq and sets the
// attention factor that scales cos and sin.
std::vector<double> InvFreq(const MlaAttentionConfig& c, double* attention_factor) {
  const int64_t dim = c.qk_rope_head_dim, half = dim / 2;
  std::vector<double> f(half);
  for (int64_t i = 0; i < half; ++i) f[i] = 1.0 / std::pow(c.rope_theta, 2.0 * i / dim);
  *attention_factor = 1.0;
  if (c.rope_type != RopeScalingType::kYarn) return f;
  const double factor = c.yarn_factor;
  *attention_factor = c.mscale != 0 && c.mscale_all_dim != 0
                          ? GetMscale(factor, c.mscale) / GetMscale(factor, c.mscale_all_dim)
                          : GetMscale(factor, 1.0);
  const auto corr = [&](double rotations) {
    return dim * std::log(c.original_max_position_embeddings / (rotations * 2 * M_PI)) /
           (2 * std::log(c.rope_theta));
  };
  const double low = std::max(std::floor(corr(c.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(c.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;
    f[i] = f[i] / factor * (1.0 - extrapolation) + f[i] * extrapolation;
  }
  return f;
}

// HF's rotation of one head's rope part at position p: apply_rotary_pos_emb_interleave
// (de-interleaving: the result is [x1 c - x2 s, x2 c + x1 s] with x1 = x[0::2], x2 = x[1::2])
// or apply_rotary_pos_emb (rotate_half).
void Rotate(const MlaAttentionConfig& c, const std::vector<double>& inv_freq, double af, int64_t p,
            double* x) {
  const int64_t half = c.qk_rope_head_dim / 2;
  std::vector<double> out(2 * half);
  for (int64_t i = 0; i < half; ++i) {
    const double cs = std::cos(p * inv_freq[i]) * af, sn = std::sin(p * inv_freq[i]) * af;
    const double a = c.rope_interleave ? x[2 * i] : x[i];
    const double b = c.rope_interleave ? x[2 * i + 1] : x[i + half];
    out[i] = a * cs - b * sn;
    out[i + half] = b * cs + a * sn;
  }
  std::copy(out.begin(), out.end(), x);
}

// HF semantics for each sequence alone: x holds the sequences' tokens one after another
// (lengths[s] rows each); returns out in the same order.
std::vector<double> NaiveMla(const MlaAttentionConfig& c, const NaiveWeights& w,
                             const std::vector<double>& x, const std::vector<int64_t>& lengths) {
  const int64_t d = c.hidden, h = c.heads, qk = c.qk_head_dim(), nope = c.qk_nope_head_dim;
  const int64_t rope = c.qk_rope_head_dim, v = c.v_head_dim, kvl = c.kv_lora_rank;
  double af = 1.0;
  const std::vector<double> inv_freq = InvFreq(c, &af);
  double scale = std::pow(static_cast<double>(qk), -0.5);
  if (c.rope_type == RopeScalingType::kYarn && c.mscale_all_dim != 0) {
    const double m = GetMscale(c.yarn_factor, c.mscale_all_dim);
    scale = scale * m * m;
  }
  std::vector<double> out;
  int64_t row0 = 0;
  for (const int64_t len : lengths) {
    std::vector<std::vector<double>> qs, ks, vs;  // [p][h * qk], [p][h * qk], [p][h * v]
    for (int64_t p = 0; p < len; ++p) {
      const double* xr = x.data() + (row0 + p) * d;
      std::vector<double> q;
      if (c.q_lora_rank > 0) {
        std::vector<double> qa = Linear(w.q_a, w.q_a_bias, xr, c.q_lora_rank, d);
        RmsNorm(w.q_a_norm, c.rms_eps, qa.data(), c.q_lora_rank);
        q = Linear(w.q_b, {}, qa.data(), h * qk, c.q_lora_rank);
      } else {
        q = Linear(w.q, {}, xr, h * qk, d);
      }
      std::vector<double> kva = Linear(w.kv_a, w.kv_a_bias, xr, kvl + rope, d);
      RmsNorm(w.kv_a_norm, c.rms_eps, kva.data(), kvl);
      const std::vector<double> kv = Linear(w.kv_b, {}, kva.data(), h * (nope + v), kvl);
      Rotate(c, inv_freq, af, p, kva.data() + kvl);
      std::vector<double> k(h * qk), vv(h * v);
      for (int64_t hh = 0; hh < h; ++hh) {
        Rotate(c, inv_freq, af, p, q.data() + hh * qk + nope);
        for (int64_t i = 0; i < nope; ++i) k[hh * qk + i] = kv[hh * (nope + v) + i];
        for (int64_t i = 0; i < rope; ++i) k[hh * qk + nope + i] = kva[kvl + i];
        for (int64_t i = 0; i < v; ++i) vv[hh * v + i] = kv[hh * (nope + v) + nope + i];
      }
      qs.push_back(q);
      ks.push_back(k);
      vs.push_back(vv);
    }
    for (int64_t p = 0; p < len; ++p) {
      std::vector<double> attn(h * v, 0.0);
      for (int64_t hh = 0; hh < h; ++hh) {
        std::vector<double> score;
        for (int64_t j = 0; j <= p; ++j) {
          double s = 0;
          for (int64_t i = 0; i < qk; ++i) s += qs[p][hh * qk + i] * ks[j][hh * qk + i];
          score.push_back(s * scale);
        }
        const double m = *std::max_element(score.begin(), score.end());
        double sum = 0;
        for (double& s : score) sum += (s = std::exp(s - m));
        for (int64_t j = 0; j <= p; ++j) {
          for (int64_t i = 0; i < v; ++i) attn[hh * v + i] += score[j] / sum * vs[j][hh * v + i];
        }
      }
      const std::vector<double> o = Linear(w.o, w.o_bias, attn.data(), d, h * v);
      out.insert(out.end(), o.begin(), o.end());
    }
    row0 += len;
  }
  return out;
}

MlaAttentionWeights ToWeights(const MlaAttentionConfig& c, const NaiveWeights& w,
                              HostTensors* host) {
  const int64_t d = c.hidden, h = c.heads, qk = c.qk_head_dim(), ql = c.q_lora_rank;
  const int64_t kva = c.kv_lora_rank + c.qk_rope_head_dim;
  const DType t = c.dtype;
  MlaAttentionWeights out;
  out.q_a_proj = host->Add(w.q_a, t, Shape{ql, d});
  out.q_a_layernorm = host->Add(w.q_a_norm, t, Shape{ql});
  out.q_b_proj = host->Add(w.q_b, t, Shape{h * qk, ql});
  out.q_proj = host->Add(w.q, t, Shape{h * qk, d});
  out.kv_a_proj_with_mqa = host->Add(w.kv_a, t, Shape{kva, d});
  out.kv_a_layernorm = host->Add(w.kv_a_norm, t, Shape{c.kv_lora_rank});
  out.kv_b_proj =
      host->Add(w.kv_b, t, Shape{h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
  out.o_proj = host->Add(w.o, t, Shape{d, h * c.v_head_dim});
  out.q_a_bias = host->Add(w.q_a_bias, t, Shape{ql});
  out.kv_a_bias = host->Add(w.kv_a_bias, t, Shape{kva});
  out.o_bias = host->Add(w.o_bias, t, Shape{d});
  return out;
}

// A backend with its allocator and upload / download helpers.
struct Env {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Allocator> allocator;

  static Env Make(int threads) {
    Env env;
    BackendOptions options;
    options.cpu_threads = threads;
    auto backend = CreateBackend(Device::Cpu(), options);
    EXPECT_TRUE(backend.ok()) << backend.status();
    env.backend = std::move(*backend);
    env.allocator = std::make_unique<Allocator>(env.backend.get());
    return env;
  }
  DeviceTensor Upload(const void* data, size_t bytes, DType dtype, Shape shape) {
    DeviceTensor t;
    auto buffer = allocator->Allocate(std::max<size_t>(bytes, 1));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    t.buffer = std::move(*buffer);
    EXPECT_TRUE(backend->CopyFromHost(t.buffer->data(), data, bytes).ok());
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
    EXPECT_TRUE(backend->CopyToHost(bytes.data(), t.data(), bytes.size()).ok());
    return Decode(bytes.data(), t.numel(), t.dtype());
  }
};

// A paged cache of the layer's geometry for a few sequences, blocks handed out in a shuffled
// order, and Forward over any list of (sequence, position) tokens.
class CacheRunner {
 public:
  static constexpr int64_t kBlockSize = 4;

  CacheRunner(Env* env, MlaAttention* layer, const std::vector<int64_t>& lengths,
              std::mt19937_64& rng)
      : env_(env), layer_(layer), lengths_(lengths) {
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
    const MlaAttentionConfig& c = layer->config();
    const Shape shape{num_blocks_, kBlockSize, layer->cache_heads(), layer->cache_head_dim()};
    // Non-zero garbage: every slot the layer reads must have been written by it.
    const std::vector<double> fill(shape.numel(), 7.0);
    k_ = env->UploadValues(fill, c.dtype, shape);
    v_ = env->UploadValues(fill, c.dtype, shape);
    block_tables_ =
        env->UploadInts(tables_, Shape{static_cast<int64_t>(lengths.size()), max_blocks_});
  }

  int64_t Slot(int s, int p) const {
    return tables_[s * max_blocks_ + p / kBlockSize] * kBlockSize + p % kBlockSize;
  }

  // x: all tokens of all sequences, sequence after sequence. Runs one Forward over `tokens`
  // and stores each token's output row into *out (same order as x).
  absl::Status Run(const std::vector<std::pair<int, int>>& tokens, const std::vector<double>& x,
                   std::vector<double>* out) {
    const MlaAttentionConfig& c = layer_->config();
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
      slots.push_back(static_cast<int32_t>(Slot(s, p)));
    }
    DeviceTensor dx = env_->UploadValues(xs, c.dtype, Shape{t, d});
    DeviceTensor dout = env_->UploadValues(std::vector<double>(t * d, 0.0), c.dtype, Shape{t, d});
    DeviceTensor dpos = env_->UploadInts(positions, Shape{t});
    DeviceTensor dseq = env_->UploadInts(seq_ids, Shape{t});
    DeviceTensor dslot = env_->UploadInts(slots, Shape{t});
    GqaAttentionBatch batch{dpos.tensor, dseq.tensor, dslot.tensor, block_tables_.tensor};
    const absl::Status status = layer_->Forward(dx.tensor, batch, cache(), dout.tensor);
    if (!status.ok()) return status;
    const std::vector<double> got = env_->Download(dout.tensor);
    out->resize(x.size());
    for (int64_t i = 0; i < t; ++i) {
      std::copy(got.begin() + i * d, got.begin() + (i + 1) * d, out->begin() + rows[i] * d);
    }
    return absl::OkStatus();
  }

  // Runs calls in order; every token's output comes from the call that ran it.
  absl::Status RunSchedule(const std::vector<std::vector<std::pair<int, int>>>& calls,
                           const std::vector<double>& x, std::vector<double>* out) {
    const int64_t d = layer_->config().hidden;
    out->assign(x.size(), 0.0);
    std::vector<double> step;
    for (const auto& tokens : calls) {
      const absl::Status status = Run(tokens, x, &step);
      if (!status.ok()) return status;
      for (const auto& [s, p] : tokens) {
        int64_t row = p;
        for (int i = 0; i < s; ++i) row += lengths_[i];
        std::copy(step.begin() + row * d, step.begin() + (row + 1) * d, out->begin() + row * d);
      }
    }
    return absl::OkStatus();
  }

  KvCacheView cache() const { return KvCacheView{k_.tensor, v_.tensor}; }

 private:
  Env* env_;
  MlaAttention* layer_;
  std::vector<int64_t> lengths_;
  int64_t max_blocks_ = 0;
  int64_t num_blocks_ = 0;
  std::vector<int32_t> tables_;
  DeviceTensor k_, v_, block_tables_;
};

using Schedule = std::vector<std::vector<std::pair<int, int>>>;

Schedule OnePrefill(const std::vector<int64_t>& lengths) {
  Schedule calls(1);
  for (size_t s = 0; s < lengths.size(); ++s) {
    for (int p = 0; p < lengths[s]; ++p) calls[0].push_back({static_cast<int>(s), p});
  }
  return calls;
}

// A prefill of each sequence's prefix, then one token per unfinished sequence per call.
Schedule PrefixThenDecode(const std::vector<int64_t>& lengths, const std::vector<int>& prefix) {
  Schedule calls(1);
  for (size_t s = 0; s < lengths.size(); ++s) {
    for (int p = 0; p < prefix[s]; ++p) calls[0].push_back({static_cast<int>(s), p});
  }
  for (int step = 0;; ++step) {
    std::vector<std::pair<int, int>> tokens;
    for (size_t s = 0; s < lengths.size(); ++s) {
      if (prefix[s] + step < lengths[s]) tokens.push_back({static_cast<int>(s), prefix[s] + step});
    }
    if (tokens.empty()) break;
    calls.push_back(tokens);
  }
  return calls;
}

const std::vector<int64_t> kLengths = {9, 3, 12};

// Chunked prefill mixed with decode steps of other sequences in the same calls.
Schedule Mixed() {
  const auto range = [](int s, int from, int to) {
    std::vector<std::pair<int, int>> v;
    for (int p = from; p < to; ++p) v.push_back({s, p});
    return v;
  };
  const auto cat = [](std::vector<std::pair<int, int>> a, std::vector<std::pair<int, int>> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  return {cat(range(0, 0, 5), range(1, 0, 3)), cat(range(2, 0, 7), range(0, 5, 6)),
          cat(range(0, 6, 7), range(2, 7, 8)), cat(range(2, 8, 12), range(0, 7, 8)),
          range(0, 8, 9)};
}

class MlaAttentionReferenceTest : public ::testing::TestWithParam<std::tuple<int, DType>> {
 public:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_P(MlaAttentionReferenceTest, PrefillAndDecodeMatchNaive) {
  const auto [index, dtype] = GetParam();
  const MlaAttentionConfig c = MakeConfig(kCases[index], dtype);
  const NaiveWeights w = RandomWeights(c, rng_);
  HostTensors host;
  Env env = Env::Make(0);
  auto layer =
      MlaAttention::Create(c, ToWeights(c, w, &host), env.backend.get(), env.allocator.get());
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ((*layer)->cache_heads(), c.heads);
  EXPECT_EQ((*layer)->cache_head_dim(), c.qk_nope_head_dim + c.qk_rope_head_dim);

  const int64_t total = std::accumulate(kLengths.begin(), kLengths.end(), int64_t{0});
  const std::vector<double> x = RoundTo(RandomUniform(total * c.hidden, rng_), dtype);
  const std::vector<double> want = NaiveMla(c, w, x, kLengths);

  const auto run = [&](const Schedule& schedule) {
    CacheRunner runner(&env, layer->get(), kLengths, rng_);
    std::vector<double> out;
    const absl::Status status = runner.RunSchedule(schedule, x, &out);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  };
  const std::vector<double> prefill = run(OnePrefill(kLengths));
  const std::vector<double> mixed = run(Mixed());
  const std::vector<double> decode = run(PrefixThenDecode(kLengths, {5, 1, 6}));
  const std::vector<double> again = run(OnePrefill(kLengths));

  const double err = MaxRelError(prefill, want);
  std::cerr << kCases[index].name << (dtype == DType::kF32 ? " f32" : " bf16") << ": rel err "
            << err << "\n";
  EXPECT_LT(err, MlaTol(dtype));
  // Packed GEMMs, row-wise ops and per-query attention: a token's bits do not depend on the
  // other tokens of its call.
  EXPECT_EQ(mixed, prefill) << "chunked prefill mixed with decode";
  EXPECT_EQ(decode, prefill) << "step-wise decode";
  EXPECT_EQ(again, prefill) << "second run";
}

std::string ParamName(const ::testing::TestParamInfo<std::tuple<int, DType>>& info) {
  return absl::StrCat(kCases[std::get<0>(info.param)].name, "_",
                      std::get<1>(info.param) == DType::kF32 ? "f32" : "bf16");
}

INSTANTIATE_TEST_SUITE_P(All, MlaAttentionReferenceTest,
                         ::testing::Combine(::testing::Range(0,
                                                             static_cast<int>(std::size(kCases))),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         ParamName);

class MlaAttentionTest : public ::testing::Test {
 public:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
    env_ = Env::Make(0);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
  }

  std::unique_ptr<MlaAttention> MakeLayer(const MlaAttentionConfig& c, Env* env = nullptr) {
    env = env != nullptr ? env : &env_;
    weights_ = RandomWeights(c, rng_);
    auto layer = MlaAttention::Create(c, ToWeights(c, weights_, &host_), env->backend.get(),
                                      env->allocator.get());
    EXPECT_TRUE(layer.ok()) << layer.status();
    return layer.ok() ? std::move(*layer) : nullptr;
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  Env env_;
  HostTensors host_;
  NaiveWeights weights_;
};

TEST_F(MlaAttentionTest, SameBitsForEveryThreadCount) {
  const MlaAttentionConfig c = MakeConfig(kCases[0], DType::kBF16);
  const NaiveWeights w = RandomWeights(c, rng_);
  const int64_t total = std::accumulate(kLengths.begin(), kLengths.end(), int64_t{0});
  const std::vector<double> x = RoundTo(RandomUniform(total * c.hidden, rng_), c.dtype);
  std::vector<std::vector<double>> outs;
  for (const int threads : {1, 2, 3}) {
    Env env = Env::Make(threads);
    auto layer =
        MlaAttention::Create(c, ToWeights(c, w, &host_), env.backend.get(), env.allocator.get());
    ASSERT_TRUE(layer.ok()) << layer.status();
    CacheRunner runner(&env, layer->get(), kLengths, rng_);
    std::vector<double> out;
    ASSERT_TRUE(runner.RunSchedule(OnePrefill(kLengths), x, &out).ok());
    outs.push_back(out);
  }
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(outs[0], outs[2]);
}

// The cache holds K = k_nope | k_pe (the same k_pe in every head) and V = v | zeros.
TEST_F(MlaAttentionTest, CacheHoldsDecompressedKAndZeroPaddedV) {
  const MlaAttentionConfig c = MakeConfig(kCases[1], DType::kF32);
  std::unique_ptr<MlaAttention> layer = MakeLayer(c);
  ASSERT_NE(layer, nullptr);
  const std::vector<int64_t> lengths = {6};
  CacheRunner runner(&env_, layer.get(), lengths, rng_);
  const std::vector<double> x = RandomUniform(6 * c.hidden, rng_);
  std::vector<double> out;
  ASSERT_TRUE(runner.RunSchedule(OnePrefill(lengths), x, &out).ok());
  const std::vector<double> k = env_.Download(runner.cache().k);
  const std::vector<double> v = env_.Download(runner.cache().v);
  const int64_t h = c.heads, qk = c.qk_head_dim(), nope = c.qk_nope_head_dim;
  for (int p = 0; p < 6; ++p) {
    const int64_t base = runner.Slot(0, p) * h * qk;
    for (int64_t hh = 0; hh < h; ++hh) {
      for (int64_t i = 0; i < qk; ++i) {
        if (i >= c.v_head_dim) {
          EXPECT_EQ(v[base + hh * qk + i], 0.0) << p << " " << hh << " " << i;
        }
        if (i >= nope) {
          EXPECT_EQ(k[base + hh * qk + i], k[base + i]) << p << " " << hh << " " << i;
        }
      }
      EXPECT_NE(v[base + hh * qk], 0.0);
    }
  }
}

TEST_F(MlaAttentionTest, ForwardAllocatesNothingAfterReserve) {
  const MlaAttentionConfig c = MakeConfig(kCases[2], DType::kBF16);  // biases: f32 scratch too
  std::unique_ptr<MlaAttention> layer = MakeLayer(c);
  ASSERT_NE(layer, nullptr);
  ASSERT_TRUE(layer->ReserveTokens(4).ok());
  CacheRunner runner(&env_, layer.get(), {4}, rng_);
  const std::vector<double> xs = RoundTo(RandomUniform(4 * c.hidden, rng_), c.dtype);
  DeviceTensor x = env_.UploadValues(xs, c.dtype, Shape{4, c.hidden});
  DeviceTensor out = env_.UploadValues(xs, c.dtype, Shape{4, c.hidden});
  DeviceTensor pos = env_.UploadInts({0, 1, 2, 3}, Shape{4});
  DeviceTensor seq = env_.UploadInts({0, 0, 0, 0}, Shape{4});
  std::vector<int32_t> slots;
  for (int p = 0; p < 4; ++p) slots.push_back(static_cast<int32_t>(runner.Slot(0, p)));
  DeviceTensor slot = env_.UploadInts(slots, Shape{4});
  DeviceTensor table = env_.UploadInts({static_cast<int32_t>(runner.Slot(0, 0) / 4)}, Shape{1, 1});
  const int64_t before = env_.allocator->allocation_count();
  const GqaAttentionBatch batch{pos.tensor, seq.tensor, slot.tensor, table.tensor};
  ASSERT_TRUE(layer->Forward(x.tensor, batch, runner.cache(), out.tensor).ok());
  // Then a decode step of the last token alone.
  const GqaAttentionBatch last{*pos.tensor.Rows(3, 1), *seq.tensor.Rows(3, 1),
                               *slot.tensor.Rows(3, 1), table.tensor};
  ASSERT_TRUE(
      layer->Forward(*x.tensor.Rows(3, 1), last, runner.cache(), *out.tensor.Rows(3, 1)).ok());
  EXPECT_EQ(env_.allocator->allocation_count(), before);
  EXPECT_THAT(std::string(layer->ReserveTokens(-1).message()),
              HasSubstr("mla_attention: ReserveTokens: tokens=-1 must be >= 0"));
}

TEST_F(MlaAttentionTest, ConfigErrorsNameTheField) {
  const MlaAttentionConfig good = MakeConfig(kCases[2], DType::kF32);  // yarn, qk = 10, v = 5
  ASSERT_TRUE(good.Validate().ok());
  const auto message = [&](auto mutate) {
    MlaAttentionConfig c = good;
    mutate(c);
    const absl::Status s = c.Validate();
    EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kInvalidArgument) << s;
    return std::string(s.message());
  };
  EXPECT_THAT(message([](auto& c) { c.hidden = 0; }),
              HasSubstr("mla_attention: hidden=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.heads = 0; }), HasSubstr("heads=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.q_lora_rank = -1; }),
              HasSubstr("q_lora_rank=-1 must be >= 0"));
  EXPECT_EQ(message([](auto& c) { c.q_lora_rank = 1; }), "");
  EXPECT_THAT(message([](auto& c) { c.kv_lora_rank = 0; }),
              HasSubstr("kv_lora_rank=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.qk_nope_head_dim = 0; }),
              HasSubstr("qk_nope_head_dim=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.qk_rope_head_dim = 0; }),
              HasSubstr("qk_rope_head_dim=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.qk_rope_head_dim = 3; }),
              HasSubstr("qk_rope_head_dim=3 must be even"));
  EXPECT_THAT(message([](auto& c) { c.v_head_dim = 0; }), HasSubstr("v_head_dim=0 must be > 0"));
  // The cache's limit: v_head_dim up to qk_nope_head_dim + qk_rope_head_dim = 10.
  EXPECT_EQ(message([](auto& c) { c.v_head_dim = 9; }), "");
  EXPECT_EQ(message([](auto& c) { c.v_head_dim = 10; }), "");
  EXPECT_THAT(message([](auto& c) { c.v_head_dim = 11; }),
              HasSubstr("v_head_dim=11 exceeds qk_nope_head_dim + qk_rope_head_dim=10"));
  EXPECT_THAT(message([](auto& c) { c.rope_theta = 0; }), HasSubstr("rope_theta=0 must be"));
  EXPECT_THAT(message([](auto& c) { c.rope_type = static_cast<RopeScalingType>(7); }),
              HasSubstr("rope_type=7"));
  EXPECT_THAT(message([](auto& c) { c.yarn_factor = 0.99; }), HasSubstr("yarn_factor=0.99"));
  EXPECT_EQ(message([](auto& c) { c.yarn_factor = 1.0; }), "");
  EXPECT_THAT(message([](auto& c) { c.original_max_position_embeddings = 0; }),
              HasSubstr("original_max_position_embeddings=0 must be > 0"));
  EXPECT_THAT(message([](auto& c) { c.beta_fast = 0; }), HasSubstr("beta_fast=0 must be"));
  EXPECT_THAT(message([](auto& c) { c.beta_slow = -1; }), HasSubstr("beta_slow=-1 must be"));
  EXPECT_THAT(message([](auto& c) { c.mscale = -0.5; }), HasSubstr("mscale=-0.5 must be"));
  EXPECT_THAT(message([](auto& c) { c.mscale_all_dim = NAN; }), HasSubstr("mscale_all_dim=nan"));
  EXPECT_EQ(message([](auto& c) { c.mscale = 0; }), "");
  // The YaRN fields are not read with the default RoPE.
  EXPECT_EQ(message([](auto& c) {
              c.rope_type = RopeScalingType::kDefault;
              c.yarn_factor = 0.5;
            }),
            "");
  EXPECT_THAT(message([](auto& c) { c.max_positions = 0; }), HasSubstr("max_positions=0"));
  EXPECT_THAT(message([](auto& c) { c.rms_eps = -1e-6f; }), HasSubstr("rms_eps="));
  EXPECT_THAT(message([](auto& c) { c.dtype = DType::kI32; }), HasSubstr("dtype="));
}

TEST_F(MlaAttentionTest, SoftmaxScaleIsHfs) {
  MlaAttentionConfig c = MakeConfig(kCases[0], DType::kF32);  // qk = 16, factor 4, all_dim 0.8
  const double m = 0.1 * 0.8 * std::log(4.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 0.25 * m * m);
  c.mscale_all_dim = 0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 0.25);
  c = MakeConfig(kCases[1], DType::kF32);  // default RoPE, qk = 10
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / std::sqrt(10.0));
}

TEST_F(MlaAttentionTest, WeightErrorsNameTheTensor) {
  const auto create = [&](const MlaAttentionConfig& c, auto mutate) {
    MlaAttentionWeights w = ToWeights(c, RandomWeights(c, rng_), &host_);
    mutate(w);
    auto layer = MlaAttention::Create(c, w, env_.backend.get(), env_.allocator.get());
    EXPECT_EQ(layer.status().code(), absl::StatusCode::kInvalidArgument) << layer.status();
    return std::string(layer.status().message());
  };
  const Tensor none;
  const MlaAttentionConfig lora = MakeConfig(kCases[1], DType::kF32);     // D 19, H 3, bias
  const MlaAttentionConfig no_lora = MakeConfig(kCases[2], DType::kF32);  // q_proj, bias
  EXPECT_THAT(create(lora, [&](auto& w) { w.q_a_proj = none; }),
              HasSubstr("mla_attention: q_a_proj is missing"));
  EXPECT_THAT(create(lora,
                     [&](auto& w) {
                       w.q_proj = host_.Add({1, 2}, DType::kF32, {1, 2});
                     }),
              HasSubstr("mla_attention: q_proj is given but the config has no use for it"));
  EXPECT_THAT(create(no_lora, [&](auto& w) { w.q_proj = none; }), HasSubstr("q_proj is missing"));
  EXPECT_THAT(create(no_lora,
                     [&](auto& w) {
                       w.q_a_bias = host_.Add({1, 2}, DType::kF32, {2});
                     }),
              HasSubstr("q_a_bias is given but the config has no use for it"));
  EXPECT_THAT(create(lora, [&](auto& w) { w.kv_a_bias = none; }),
              HasSubstr("kv_a_bias is missing"));
  // o_proj laid out for qk-wide heads instead of v-wide ones.
  EXPECT_THAT(
      create(lora,
             [&](auto& w) {
               w.o_proj = host_.Add(std::vector<double>(19 * 30, 0.5), DType::kF32, {19, 30});
             }),
      HasSubstr("mla_attention: o_proj has shape [19, 30], expected [19, 15]"));
  EXPECT_THAT(
      create(lora,
             [&](auto& w) {
               w.kv_b_proj = host_.Add(std::vector<double>(30 * 9, 0.5), DType::kF32, {30, 9});
             }),
      HasSubstr("kv_b_proj has shape [30, 9], expected [33, 9]"));
  EXPECT_THAT(create(lora,
                     [&](auto& w) {
                       w.kv_a_proj_with_mqa =
                           host_.Add(std::vector<double>(9 * 19, 0.5), DType::kF32, {9, 19});
                     }),
              HasSubstr("kv_a_proj_with_mqa has shape [9, 19], expected [13, 19]"));
}

TEST_F(MlaAttentionTest, ForwardErrorsNameTheTensor) {
  const MlaAttentionConfig c = MakeConfig(kCases[1], DType::kF32);  // H 3, qk 10, v 5
  std::unique_ptr<MlaAttention> layer = MakeLayer(c);
  ASSERT_NE(layer, nullptr);
  CacheRunner runner(&env_, layer.get(), {4}, rng_);
  const std::vector<double> xs = RandomUniform(2 * c.hidden, rng_);
  DeviceTensor x = env_.UploadValues(xs, DType::kF32, Shape{2, c.hidden});
  DeviceTensor out = env_.UploadValues(xs, DType::kF32, Shape{2, c.hidden});
  DeviceTensor pos = env_.UploadInts({0, 1}, Shape{2});
  DeviceTensor three = env_.UploadInts({0, 1, 2}, Shape{3});
  DeviceTensor seqs = env_.UploadInts({0, 0}, Shape{2});
  DeviceTensor slots = env_.UploadInts(
      {static_cast<int32_t>(runner.Slot(0, 0)), static_cast<int32_t>(runner.Slot(0, 1))}, Shape{2});
  DeviceTensor tables = env_.UploadInts({static_cast<int32_t>(runner.Slot(0, 0) / 4)}, Shape{1, 1});
  const GqaAttentionBatch batch{pos.tensor, seqs.tensor, slots.tensor, tables.tensor};
  const absl::Status ok = layer->Forward(x.tensor, batch, runner.cache(), out.tensor);
  EXPECT_TRUE(ok.ok()) << ok;

  const auto forward = [&](const Tensor& in, const GqaAttentionBatch& b, const KvCacheView& kv,
                           const Tensor& o) {
    const absl::Status s = layer->Forward(in, b, kv, o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    return std::string(s.message());
  };
  GqaAttentionBatch b = batch;
  b.positions = three.tensor;
  EXPECT_THAT(forward(x.tensor, b, runner.cache(), out.tensor),
              HasSubstr("mla_attention: positions has shape [3], expected [2 (x's rows)]"));
  DeviceTensor wide = env_.UploadValues(std::vector<double>(2 * 20, 0.5), DType::kF32, {2, 20});
  EXPECT_THAT(forward(wide.tensor, batch, runner.cache(), out.tensor),
              HasSubstr("x has shape [2, 20], expected [T, 19]"));
  EXPECT_THAT(forward(x.tensor, batch, runner.cache(), x.tensor), HasSubstr("out overlaps x"));
  // A cache laid out for v_head_dim-wide heads (the shape GQA would use) is not this layer's.
  const int64_t blocks = runner.cache().k.dim(0);
  DeviceTensor narrow_k = env_.UploadValues(std::vector<double>(blocks * 4 * 3 * 5, 0.5),
                                            DType::kF32, {blocks, 4, 3, 5});
  DeviceTensor narrow_v = env_.UploadValues(std::vector<double>(blocks * 4 * 3 * 5, 0.5),
                                            DType::kF32, {blocks, 4, 3, 5});
  EXPECT_THAT(forward(x.tensor, batch, {narrow_k.tensor, narrow_v.tensor}, out.tensor),
              HasSubstr(absl::StrCat("cache.k has shape [", blocks,
                                     ", 4, 3, 5], expected [num_blocks, block_size, 3, 10]")));
  KvCacheView kv = runner.cache();
  kv.v = narrow_v.tensor;
  EXPECT_THAT(forward(x.tensor, batch, kv, out.tensor),
              HasSubstr(absl::StrCat("cache.v has shape [", blocks, ", 4, 3, 5], expected [",
                                     blocks, ", 4, 3, 10] (cache.k's shape)")));

  // A position beyond the RoPE table comes back from the backend before the cache is written.
  const std::vector<double> k_before = env_.Download(runner.cache().k);
  DeviceTensor far = env_.UploadInts({2, static_cast<int32_t>(c.max_positions)}, Shape{2});
  b = batch;
  b.positions = far.tensor;
  EXPECT_THAT(forward(x.tensor, b, runner.cache(), out.tensor), HasSubstr("max_positions=64"));
  EXPECT_EQ(env_.Download(runner.cache().k), k_before);
  // So does a slot outside the cache.
  DeviceTensor bad_slot = env_.UploadInts({0, static_cast<int32_t>(blocks * 4)}, Shape{2});
  b = batch;
  b.slot_mapping = bad_slot.tensor;
  EXPECT_THAT(forward(x.tensor, b, runner.cache(), out.tensor), HasSubstr("slot"));
  EXPECT_EQ(env_.Download(runner.cache().k), k_before);
}

}  // namespace
}  // namespace moe::testing
