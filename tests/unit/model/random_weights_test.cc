// Model::Load with ModelOptions::random_weights: every shipped family from its config.json alone
// (copied into an empty folder) loads and gives finite logits, the same seed the same bits, a
// different seed different logits; the checkpoint beside config.json is never opened; a folder
// without config.json is NotFound naming it. Also the config-only benchmark folder
// models/bench/qwen3-30b-a3b: it parses as the released Qwen3-30B-A3B (48 layers, 61 GB of bf16).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/core/buffer.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/model/tensor_source.h"
#include "engine/runtime/kv_block_manager.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/status_macros.h"
#include "tests/testing/step_batch.h"
#include "tests/testing/test_backend.h"

namespace moe::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBlockSize = 4;
constexpr int64_t kBlocks = 16;

// A fresh folder under $TEST_TMPDIR holding only `model`'s config.json.
std::string ConfigOnlyCopy(const std::string& model, const std::string& name) {
  const fs::path dir = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fs::path(model) / "config.json", dir / "config.json");
  return dir.string();
}

// Loads `dir` with `options` and runs two prompts (prefill) and one decode step of both;
// returns the logits of every row of both steps.
absl::StatusOr<std::vector<float>> LoadAndRun(const std::string& dir, const ModelOptions& options,
                                              Backend* backend) {
  Allocator allocator(backend);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                       Model::Load(dir, options, backend, &allocator));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, model->AllocateKvCache(kBlocks, kBlockSize));
  MOE_ASSIGN_OR_RETURN(KvBlockManager blocks, KvBlockManager::Create(kBlocks, kBlockSize, 4));
  const int64_t vocab = model->config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, static_cast<int32_t>(200 % vocab), 3}, {7, 2}};
  std::vector<float> all;
  const std::vector<int64_t> seqs = {0, 1};
  for (int step = 0; step < 2; ++step) {
    const std::vector<std::vector<int32_t>> chunks =
        step == 0 ? prompts : std::vector<std::vector<int32_t>>{{11}, {12}};
    MOE_ASSIGN_OR_RETURN(ModelBatch b, BuildStepBatch(blocks, seqs, chunks, /*all_rows=*/true,
                                                      blocks.max_blocks_per_seq()));
    std::vector<float> logits;
    MOE_RETURN_IF_ERROR(model->Forward(b, *cache, &logits));
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

struct Param {
  std::string model;
  DType dtype;
};

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  std::string name = fs::path(info.param.model).filename().string();
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return absl::StrCat(name, "_", DTypeName(info.param.dtype));
}

class RandomWeightsTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    auto backend = CreateTestBackend();
    if (!backend.ok()) GTEST_SKIP() << backend.status();
    backend_ = std::move(*backend);
  }
  ModelOptions Options(uint64_t seed) const {
    ModelOptions o;
    o.dtype = GetParam().dtype;
    o.random_weights = true;
    o.random_seed = seed;
    return o;
  }
  std::unique_ptr<Backend> backend_;
};

TEST_P(RandomWeightsTest, LoadsFromConfigAloneAndRepeats) {
  const std::string dir = ConfigOnlyCopy(GetParam().model, ParamName({GetParam(), 0}));
  auto a = LoadAndRun(dir, Options(1), backend_.get());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_FALSE(a->empty());
  double max_abs = 0;
  for (float x : *a) {
    ASSERT_TRUE(std::isfinite(x));
    max_abs = std::max<double>(max_abs, std::fabs(x));
  }
  // Moderate logits: neither vanishing nor exploding through the layers.
  EXPECT_GT(max_abs, 0.05);
  EXPECT_LT(max_abs, 50.0);

  auto again = LoadAndRun(dir, Options(1), backend_.get());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*a, *again);  // bit for bit

  auto other = LoadAndRun(dir, Options(2), backend_.get());
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_EQ(other->size(), a->size());
  int64_t differ = 0;
  for (size_t i = 0; i < a->size(); ++i) differ += (*a)[i] != (*other)[i];
  EXPECT_GT(differ, static_cast<int64_t>(a->size() / 2));
}

// The folder's own checkpoint is neither opened nor checked: a corrupt model.safetensors beside
// config.json fails a normal load and does not matter to a random one.
TEST_P(RandomWeightsTest, IgnoresTheCheckpoint) {
  const std::string dir = ConfigOnlyCopy(GetParam().model, ParamName({GetParam(), 0}) + "_junk");
  std::ofstream(fs::path(dir) / "model.safetensors") << "not a safetensors file";
  ModelOptions real;
  real.dtype = GetParam().dtype;
  Allocator allocator(backend_.get());
  EXPECT_FALSE(Model::Load(dir, real, backend_.get(), &allocator).ok());
  auto random = LoadAndRun(dir, Options(1), backend_.get());
  ASSERT_TRUE(random.ok()) << random.status();
  // ... and gives what the folder with config.json alone gives.
  auto clean = LoadAndRun(ConfigOnlyCopy(GetParam().model, ParamName({GetParam(), 0}) + "_clean"),
                          Options(1), backend_.get());
  ASSERT_TRUE(clean.ok()) << clean.status();
  EXPECT_EQ(*random, *clean);
}

INSTANTIATE_TEST_SUITE_P(Families, RandomWeightsTest,
                         ::testing::Values(Param{"models/mixtral-tiny", DType::kF32},
                                           Param{"models/qwen3-moe-tiny", DType::kF32},
                                           Param{"models/qwen2-moe-tiny", DType::kF32},
                                           Param{"models/deepseek-v3-tiny", DType::kF32},
                                           Param{"models/qwen3-moe-tiny", DType::kBF16},
                                           Param{"models/deepseek-v3-tiny", DType::kBF16}),
                         ParamName);

TEST(RandomWeightsErrorsTest, MissingConfigIsNotFoundNamingIt) {
  auto backend = CreateTestBackend();
  if (!backend.ok()) GTEST_SKIP() << backend.status();
  const fs::path dir = fs::path(std::getenv("TEST_TMPDIR")) / "empty";
  fs::create_directories(dir);
  Allocator allocator(backend->get());
  ModelOptions o;
  o.random_weights = true;
  auto model = Model::Load(dir.string(), o, backend->get(), &allocator);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(model.status().message(), (dir / "config.json").string()))
      << model.status();
}

// The benchmark folder: the released Qwen3-30B-A3B's config, 30.5 B parameters, bf16.
TEST(BenchConfigTest, Qwen3_30B_A3B) {
  auto c = LoadModelConfig("models/bench/qwen3-30b-a3b");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kQwen3Moe);
  EXPECT_EQ(c->num_hidden_layers, 48);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->max_position_embeddings, 40960);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->rope.theta, 1e6);
  EXPECT_EQ(c->moe.num_experts, 128);
  EXPECT_EQ(c->moe.top_k, 8);
  EXPECT_EQ(c->moe.inter, 768);
  EXPECT_TRUE(c->moe.renormalize);
  for (int i = 0; i < 48; ++i) EXPECT_TRUE(c->layer_is_moe[i]) << i;
  EXPECT_EQ(RandomWeightDType(*c), DType::kBF16);
  int64_t params = 0;
  for (const ExpectedTensor& t : ExpectedTensors(*c)) params += t.shape.numel();
  EXPECT_EQ(params, 30532122624);  // 61.06 GB of bf16
}

}  // namespace
}  // namespace moe::testing
