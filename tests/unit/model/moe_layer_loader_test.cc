// LoadMoeLayer on every MoE layer of every shipped tiny checkpoint, against the float64 naive
// MoE fed the same weights read straight from the checkpoint; the layer errors; and copies of a
// checkpoint with a tensor missing or reshaped.
#include "engine/model/moe_layer_loader.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors_index.h"
#include "gtest/gtest.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_util.h"
#include "tests/testing/tolerances.h"
#include "tests/unit/model/safetensors_test_util.h"
#include "tests/unit/moe/moe_test_util.h"
#include "tests/unit/moe/naive_moe.h"

namespace moe::testing {
namespace {

constexpr int64_t kTokens = 7;

struct Model {
  ModelConfig config;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
};

absl::StatusOr<Model> OpenModel(const std::string& dir) {
  Model m;
  MOE_ASSIGN_OR_RETURN(m.config, LoadModelConfig(dir));
  auto ckpt = dir == "models/qwen2-moe-tiny"
                  ? SafetensorsCheckpoint::OpenIndex(dir + "/model.safetensors.index.json")
                  : SafetensorsCheckpoint::OpenFile(dir + "/model.safetensors");
  MOE_RETURN_IF_ERROR(ckpt.status());
  m.checkpoint = std::move(*ckpt);
  return m;
}

// The values of checkpoint tensor `name` (F32 or BF16), rounded to `dtype`.
std::vector<double> Read(const SafetensorsCheckpoint& ckpt, const std::string& name, DType dtype) {
  auto t = ckpt.Tensor(name);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return {};
  std::vector<uint64_t> aligned((t->byte_size + 7) / 8);
  std::memcpy(aligned.data(), t->data, t->byte_size);
  return RoundTo(Decode(aligned.data(), t->shape.numel(), t->dtype), dtype);
}

// The layer's weights read from the checkpoint: the router gate and bias at full f32 value
// (the naive reference rounds them to a bf16 run's values itself), the rest in `dtype`. Names
// written out per family, independently of checkpoint_layout.
NaiveMoeWeights ReadWeights(const ModelConfig& c, const SafetensorsCheckpoint& ckpt, int layer,
                            DType dtype) {
  const std::string l = absl::StrCat("model.layers.", layer, ".");
  const bool mixtral = c.family == ModelFamily::kMixtral;
  const std::string b = l + (mixtral ? "block_sparse_moe." : "mlp.");
  NaiveMoeWeights w;
  w.gate = Read(ckpt, b + "gate.weight", DType::kF32);
  if (c.moe.use_expert_bias) {
    w.bias = Read(ckpt, b + "gate.e_score_correction_bias", DType::kF32);
  }
  for (int64_t e = 0; e < c.moe.num_experts; ++e) {
    const std::string x = absl::StrCat(b, "experts.", e, ".");
    w.w1.push_back(Read(ckpt, x + (mixtral ? "w1" : "gate_proj") + ".weight", dtype));
    w.w3.push_back(Read(ckpt, x + (mixtral ? "w3" : "up_proj") + ".weight", dtype));
    w.w2.push_back(Read(ckpt, x + (mixtral ? "w2" : "down_proj") + ".weight", dtype));
  }
  if (c.moe.num_shared_experts > 0) {
    const std::string s =
        b + (c.family == ModelFamily::kQwen2Moe ? "shared_expert." : "shared_experts.");
    w.shared_w1 = Read(ckpt, s + "gate_proj.weight", dtype);
    w.shared_w3 = Read(ckpt, s + "up_proj.weight", dtype);
    w.shared_w2 = Read(ckpt, s + "down_proj.weight", dtype);
  }
  if (c.moe.shared_gate) w.shared_gate = Read(ckpt, b + "shared_expert_gate.weight", dtype);
  return w;
}

class MoeLayerLoaderTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto dev = MakeCpuDevice();
    ASSERT_TRUE(dev.ok()) << dev.status();
    dev_ = std::move(*dev);
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "replay with MOE_TEST_SEED=" << seed_ << "\n";
  }

  // Loads `layer` in `dtype`, runs it on random x [7, D] and compares with the naive MoE.
  void CheckLayer(const Model& m, int layer, DType dtype) {
    SCOPED_TRACE(absl::StrCat("layer ", layer, " ", DTypeName(dtype)));
    auto block = LoadMoeLayer(m.config, *m.checkpoint, layer, dtype, dev_.backend.get(),
                              dev_.allocator.get());
    ASSERT_TRUE(block.ok()) << block.status();
    const MoeConfig config = MoeLayerConfig(m.config, dtype);
    const NaiveMoeWeights w = ReadWeights(m.config, *m.checkpoint, layer, dtype);
    const std::vector<double> x = RandomRoutableInput(config, w, kTokens, rng_);
    auto got = RunBlock(block->get(), dev_, x, kTokens);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(MaxRelError(got->values, NaiveMoe(config, w, x, kTokens)), BlockTol(dtype));
    std::vector<int32_t> ids;
    std::vector<float> weights;
    ASSERT_TRUE((*block)->CopyLastRouting(&ids, &weights).ok());
    EXPECT_EQ(ids, NaiveRoute(config, w, x, kTokens).ids);
  }

  TestDevice dev_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_P(MoeLayerLoaderTest, EveryMoeLayerMatchesNaiveMoe) {
  auto m = OpenModel(GetParam());
  ASSERT_TRUE(m.ok()) << m.status();
  int moe_layers = 0;
  for (int layer = 0; layer < m->config.num_hidden_layers; ++layer) {
    if (!m->config.layer_is_moe[layer]) continue;
    ++moe_layers;
    CheckLayer(*m, layer, DType::kF32);
    CheckLayer(*m, layer, DType::kBF16);
  }
  EXPECT_GT(moe_layers, 0);
}

TEST_P(MoeLayerLoaderTest, LayerOutOfRange) {
  auto m = OpenModel(GetParam());
  ASSERT_TRUE(m.ok()) << m.status();
  const int n = static_cast<int>(m->config.num_hidden_layers);
  for (int layer : {-1, n, n + 1}) {
    auto block = LoadMoeLayer(m->config, *m->checkpoint, layer, DType::kF32, dev_.backend.get(),
                              dev_.allocator.get());
    ASSERT_FALSE(block.ok());
    EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(block.status().message(),
              absl::StrCat("LoadMoeLayer: layer ", layer, " is out of range [0, ", n, ")"));
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, MoeLayerLoaderTest,
                         ::testing::Values("models/mixtral-tiny", "models/qwen3-moe-tiny",
                                           "models/qwen2-moe-tiny", "models/deepseek-v3-tiny"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param.substr(info.param.find('/') + 1);
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

class MoeLayerLoaderErrorTest : public MoeLayerLoaderTest {};

TEST_F(MoeLayerLoaderErrorTest, DenseLayerIsRefused) {
  // Qwen3-MoE: mlp_only_layers = [0]; DeepSeek-V3: first_k_dense_replace = 1.
  for (const char* dir : {"models/qwen3-moe-tiny", "models/deepseek-v3-tiny"}) {
    auto m = OpenModel(dir);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_FALSE(m->config.layer_is_moe[0]);
    auto block = LoadMoeLayer(m->config, *m->checkpoint, 0, DType::kF32, dev_.backend.get(),
                              dev_.allocator.get());
    ASSERT_FALSE(block.ok()) << dir;
    EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(block.status().message(), "LoadMoeLayer: layer 0 is a dense layer, not an MoE layer");
  }
}

// The bias must decide the selection (the engine picks what the biased naive routing picks,
// which differs from the unbiased one on some token) and must not enter the weights (the output
// matches the naive MoE, whose weights come from the unbiased scores).
TEST_F(MoeLayerLoaderErrorTest, DeepseekBiasSelectsOnly) {
  auto m = OpenModel("models/deepseek-v3-tiny");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(m->config.moe.use_expert_bias);
  const int layer = 1;
  const MoeConfig config = MoeLayerConfig(m->config, DType::kF32);
  const NaiveMoeWeights w = ReadWeights(m->config, *m->checkpoint, layer, DType::kF32);
  NaiveMoeWeights unbiased = w;
  unbiased.bias.assign(w.bias.size(), 0.0);
  MoeConfig unbiased_config = config;
  std::vector<double> x;
  bool differs = false;
  for (int attempt = 0; attempt < 50 && !differs; ++attempt) {
    x = RandomRoutableInput(config, w, kTokens, rng_);
    differs = NaiveRoute(config, w, x, kTokens).ids !=
              NaiveRoute(unbiased_config, unbiased, x, kTokens).ids;
  }
  ASSERT_TRUE(differs) << "the checkpoint's bias never changes the selection";
  auto block = LoadMoeLayer(m->config, *m->checkpoint, layer, DType::kF32, dev_.backend.get(),
                            dev_.allocator.get());
  ASSERT_TRUE(block.ok()) << block.status();
  auto got = RunBlock(block->get(), dev_, x, kTokens);
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<int32_t> ids;
  std::vector<float> weights;
  ASSERT_TRUE((*block)->CopyLastRouting(&ids, &weights).ok());
  const NaiveRouting want = NaiveRoute(config, w, x, kTokens);
  EXPECT_EQ(ids, want.ids);
  for (size_t i = 0; i < weights.size(); ++i) {
    EXPECT_NEAR(weights[i], want.weights[i], 1e-5) << "slot " << i;
  }
  EXPECT_LE(MaxRelError(got->values, NaiveMoe(config, w, x, kTokens)), kBlockTolF32);
}

// Every tensor of the Mixtral checkpoint written again, with `edit` applied to the list.
template <typename Edit>
std::string RewriteMixtral(absl::string_view file, Edit edit) {
  auto m = OpenModel("models/mixtral-tiny");
  EXPECT_TRUE(m.ok()) << m.status();
  std::vector<TensorSpec> specs;
  for (const std::string& name : m->checkpoint->names()) {
    auto t = m->checkpoint->Tensor(name);
    EXPECT_TRUE(t.ok()) << t.status();
    specs.push_back({name, "F32", std::vector<int64_t>(t->shape.begin(), t->shape.end()),
                     std::string(reinterpret_cast<const char*>(t->data), t->byte_size)});
  }
  edit(specs);
  return WriteTempFile(file, Image(specs));
}

TEST_F(MoeLayerLoaderErrorTest, MissingTensorNamesIt) {
  const std::string missing = "model.layers.1.block_sparse_moe.experts.3.w3.weight";
  const std::string path = RewriteMixtral("missing.safetensors", [&](std::vector<TensorSpec>& s) {
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i].name == missing) s.erase(s.begin() + i);
    }
  });
  auto m = OpenModel("models/mixtral-tiny");
  ASSERT_TRUE(m.ok()) << m.status();
  auto ckpt = SafetensorsCheckpoint::OpenFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(
      LoadMoeLayer(m->config, **ckpt, 0, DType::kF32, dev_.backend.get(), dev_.allocator.get())
          .ok());
  auto block =
      LoadMoeLayer(m->config, **ckpt, 1, DType::kF32, dev_.backend.get(), dev_.allocator.get());
  ASSERT_FALSE(block.ok());
  EXPECT_EQ(block.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(block.status().message().find(missing), absl::string_view::npos) << block.status();
}

TEST_F(MoeLayerLoaderErrorTest, MisshapenTensorNamesFileAndTensor) {
  const std::string bad = "model.layers.0.block_sparse_moe.gate.weight";
  const std::string path = RewriteMixtral("reshaped.safetensors", [&](std::vector<TensorSpec>& s) {
    for (TensorSpec& t : s) {
      if (t.name == bad) t.shape = {t.shape[1], t.shape[0]};
    }
  });
  auto m = OpenModel("models/mixtral-tiny");
  ASSERT_TRUE(m.ok()) << m.status();
  auto ckpt = SafetensorsCheckpoint::OpenFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto block =
      LoadMoeLayer(m->config, **ckpt, 0, DType::kF32, dev_.backend.get(), dev_.allocator.get());
  ASSERT_FALSE(block.ok());
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
  const int64_t e = m->config.moe.num_experts;
  const int64_t d = m->config.hidden_size;
  EXPECT_EQ(block.status().message(), absl::StrCat(path, ": tensor \"", bad, "\" has shape [", d,
                                                   ", ", e, "], expected [", e, ", ", d, "]"));
}

}  // namespace
}  // namespace moe::testing
