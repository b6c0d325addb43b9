// Model steps replayed from recorded op graphs (ModelOptions::record_step_graphs) give the same
// logit bits as the same steps run op by op, for every shipped family: prefill chunks, decode
// steps that repeat a shape (replays), a sequence finishing (a new shape), and block tables
// growing past a padded width. Runs on the backend MOE_TEST_BACKEND names; skipped on one that
// records no graphs (the CPU's), where there is nothing to compare.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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

constexpr int64_t kBlockSize = 2;  // small, so tables grow past the padded width of 8

// One model on its own backend, driven step by step with greedy decoding.
class StepRunner {
 public:
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(const std::string& dir, DType dtype,
                                                            bool graphs) {
    auto r = std::unique_ptr<StepRunner>(new StepRunner());
    MOE_ASSIGN_OR_RETURN(r->backend_, CreateTestBackend());
    r->allocator_ = std::make_unique<Allocator>(r->backend_.get());
    MOE_ASSIGN_OR_RETURN(
        r->model_, Model::Load(dir, ModelOptions{.dtype = dtype, .record_step_graphs = graphs},
                               r->backend_.get(), r->allocator_.get()));
    constexpr int64_t kBlocks = 96;
    MOE_ASSIGN_OR_RETURN(r->cache_, r->model_->AllocateKvCache(kBlocks, kBlockSize));
    MOE_ASSIGN_OR_RETURN(KvBlockManager blocks,
                         KvBlockManager::Create(kBlocks, kBlockSize, kBlocks / 3));
    r->blocks_ = std::make_unique<KvBlockManager>(std::move(blocks));
    return r;
  }

  Model& model() { return *model_; }

  // Feeds chunks[s] to sequence ids[s] (each after its earlier tokens); returns the logits of
  // each sequence's last token.
  absl::StatusOr<std::vector<float>> Step(const std::vector<int64_t>& ids,
                                          const std::vector<std::vector<int32_t>>& chunks) {
    // Tables as wide as the step's longest sequence needs, as the generator builds them.
    MOE_ASSIGN_OR_RETURN(ModelBatch b, BuildStepBatch(*blocks_, ids, chunks, /*all_rows=*/false));
    std::vector<float> logits;
    MOE_RETURN_IF_ERROR(model_->Forward(b, *cache_, &logits));
    return logits;
  }

 private:
  StepRunner() = default;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Allocator> allocator_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<KvBlockManager> blocks_;
};

struct Param {
  std::string model;
  bool bf16;
};

class ModelStepGraphTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateTestBackend();
    if (!backend.ok()) GTEST_SKIP() << backend.status();
    if (!(*backend)->RecordsOpGraphs()) {
      GTEST_SKIP() << (*backend)->Describe()
                   << " records no op graphs; run with MOE_TEST_BACKEND=cuda";
    }
  }
};

TEST_P(ModelStepGraphTest, ReplayedStepsGiveTheSameBitsAsOpByOp) {
  const std::string dir = "models/" + GetParam().model;
  const DType dtype = GetParam().bf16 ? DType::kBF16 : DType::kF32;
  absl::StatusOr<std::unique_ptr<StepRunner>> graphs = StepRunner::Create(dir, dtype, true);
  absl::StatusOr<std::unique_ptr<StepRunner>> eager = StepRunner::Create(dir, dtype, false);
  ASSERT_TRUE(graphs.ok()) << graphs.status();
  ASSERT_TRUE(eager.ok()) << eager.status();
  const int64_t vocab = (*graphs)->model().config().vocab_size;

  // Prefill three sequences in one step (odd lengths), then decode greedily; sequence 1 stops
  // after 4 steps, and the others run on until their tables pass 8 blocks (16+ tokens).
  std::vector<int64_t> ids = {0, 1, 2};
  std::vector<std::vector<int32_t>> chunks = {{5, 17, 3, 90, 11}, {42, 7, 8}, {1, 2, 3, 4, 5, 6, 7}};
  for (auto& c : chunks) {
    for (int32_t& t : c) t %= static_cast<int32_t>(vocab);
  }
  for (int step = 0; step < 18; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    absl::StatusOr<std::vector<float>> got = (*graphs)->Step(ids, chunks);
    absl::StatusOr<std::vector<float>> want = (*eager)->Step(ids, chunks);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got->size(), want->size());
    ASSERT_EQ(0, std::memcmp(got->data(), want->data(), got->size() * sizeof(float)));
    for (size_t s = 0; s < ids.size(); ++s) {
      const float* row = got->data() + s * vocab;
      chunks[s] = {static_cast<int32_t>(std::max_element(row, row + vocab) - row)};
    }
    if (step == 4) {
      ids.erase(ids.begin() + 1);
      chunks.erase(chunks.begin() + 1);
    }
  }
  const Model::StepGraphStats& stats = (*graphs)->model().step_graph_stats();
  EXPECT_EQ((*eager)->model().step_graph_stats().replayed, 0);
  if (!GetParam().bf16) {
    // f32 experts go through cuBLASLt one expert at a time, which needs the counts on the host:
    // such steps are not recordable and run op by op (checked above: the same bits).
    EXPECT_EQ(stats.recorded, 0);
    EXPECT_EQ(stats.failed, 3) << stats.last_failure;
    return;
  }
  // Four shapes: the prefill (1 step), 3 sequences (4 steps), 2 sequences with tables of 8
  // (4 steps), 2 with tables of 16 (9 steps). Each is recorded on its second step.
  ASSERT_EQ(stats.failed, 0) << stats.last_failure;
  EXPECT_EQ(stats.recorded, 3);
  EXPECT_EQ(stats.replayed, 14);
}

INSTANTIATE_TEST_SUITE_P(Families, ModelStepGraphTest,
                         ::testing::Values(Param{"qwen3-moe-tiny", true},
                                           Param{"qwen3-moe-tiny", false},
                                           Param{"mixtral-tiny", true},
                                           Param{"qwen2-moe-tiny", true},
                                           Param{"deepseek-v3-tiny", true}),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           std::string name = info.param.model + (info.param.bf16 ? "_bf16" : "_f32");
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace moe::testing
