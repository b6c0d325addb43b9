// ModelOptions::batch_invariant: a sequence's logits are the same bits alone, batched with other
// sequences, and with its prompt cut into other chunks, for every shipped family in f32 and
// bf16. Steps of more than 256 tokens take a GPU's large-m GEMM paths, where the mode matters
// (the CPU backend is row-invariant anyway). Runs on the backend MOE_TEST_BACKEND names.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/core/buffer.h"
#include "engine/model/model.h"
#include "engine/runtime/kv_block_manager.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/status_macros.h"
#include "tests/testing/step_batch.h"
#include "tests/testing/test_backend.h"

namespace moe::testing {
namespace {

constexpr int64_t kBlockSize = 16;
constexpr int64_t kBlocks = 96;

std::vector<int32_t> Prompt(int64_t length, int64_t vocab, int32_t salt) {
  std::vector<int32_t> p(length);
  for (int64_t i = 0; i < length; ++i) p[i] = static_cast<int32_t>((i * 31 + salt * 7 + 3) % vocab);
  return p;
}

// Runs `steps` (per step: sequence ids and their chunks) on a fresh cache and returns, for each
// step, the logits of every new token (all rows).
absl::StatusOr<std::vector<std::vector<float>>> RunSteps(
    Model& model,
    const std::vector<std::pair<std::vector<int64_t>, std::vector<std::vector<int32_t>>>>& steps) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, model.AllocateKvCache(kBlocks, kBlockSize));
  MOE_ASSIGN_OR_RETURN(KvBlockManager blocks, KvBlockManager::Create(kBlocks, kBlockSize, 32));
  std::vector<std::vector<float>> out;
  for (const auto& [ids, chunks] : steps) {
    MOE_ASSIGN_OR_RETURN(ModelBatch b, BuildStepBatch(blocks, ids, chunks, /*all_rows=*/true));
    std::vector<float> logits;
    MOE_RETURN_IF_ERROR(model.Forward(b, *cache, &logits));
    out.push_back(std::move(logits));
  }
  return out;
}

struct Param {
  std::string model;
  DType dtype;
};

class ModelBatchInvarianceTest : public ::testing::TestWithParam<Param> {};

TEST_P(ModelBatchInvarianceTest, SequenceLogitsDoNotDependOnTheBatch) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateTestBackend();
  if (!backend.ok()) GTEST_SKIP() << backend.status();
  Allocator allocator(backend->get());
  auto model = Model::Load("models/" + GetParam().model,
                           ModelOptions{.dtype = GetParam().dtype, .batch_invariant = true},
                           backend->get(), &allocator);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t v = (*model)->config().vocab_size;
  const std::vector<int32_t> mine = Prompt(150, v, 1);
  const std::vector<int32_t> a = Prompt(90, v, 2), b = Prompt(37, v, 3);

  // Alone, in one step.
  auto alone = RunSteps(**model, {{{1}, {mine}}});
  ASSERT_TRUE(alone.ok()) << alone.status();
  // First in a 277-token step with two others.
  auto batched = RunSteps(**model, {{{1, 2, 3}, {mine, a, b}}});
  ASSERT_TRUE(batched.ok()) << batched.status();
  // Last, its prompt cut into 70 + 80 tokens, each chunk behind other sequences' tokens.
  const std::vector<int32_t> head(mine.begin(), mine.begin() + 70),
      tail(mine.begin() + 70, mine.end());
  auto chunked = RunSteps(**model, {{{2, 1}, {a, head}}, {{3, 1}, {b, tail}}});
  ASSERT_TRUE(chunked.ok()) << chunked.status();

  const size_t row = static_cast<size_t>(v);
  const std::vector<float>& want = (*alone)[0];
  ASSERT_EQ(want.size(), mine.size() * row);
  EXPECT_EQ(0, std::memcmp((*batched)[0].data(), want.data(), want.size() * sizeof(float)))
      << "batched with two other sequences";
  const std::vector<float>& first = (*chunked)[0];
  const std::vector<float>& second = (*chunked)[1];
  EXPECT_EQ(0, std::memcmp(first.data() + a.size() * row, want.data(), head.size() * row * 4))
      << "first chunk, behind another sequence";
  EXPECT_EQ(0, std::memcmp(second.data() + b.size() * row, want.data() + head.size() * row,
                           tail.size() * row * 4))
      << "second chunk, behind another sequence";
}

std::string Name(const ::testing::TestParamInfo<Param>& info) {
  std::string name = absl::StrCat(info.param.model, "_", DTypeName(info.param.dtype));
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Families, ModelBatchInvarianceTest,
                         ::testing::Values(Param{"qwen3-moe-tiny", DType::kF32},
                                           Param{"qwen3-moe-tiny", DType::kBF16},
                                           Param{"mixtral-tiny", DType::kBF16},
                                           Param{"deepseek-v3-tiny", DType::kBF16},
                                           Param{"deepseek-v3-tiny", DType::kF32},
                                           Param{"qwen2-moe-tiny", DType::kBF16}),
                         Name);

}  // namespace
}  // namespace moe::testing
