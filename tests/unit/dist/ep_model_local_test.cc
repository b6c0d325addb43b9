// Expert-parallel whole models with ranks as threads (LocalCommunicatorGroup): logits and greedy
// generation through EpStepRunner bit-identical to one device (ep_model_cases.h), for three
// families, P = 1, 2 and 4, the three equal-split modes; and a rank loading from a copy of the
// checkpoint that holds only its own experts (it reads nothing of the others').
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/dist/expert_placement.h"
#include "engine/dist/local_communicator.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/dist/ep_model_cases.h"
#include "tests/unit/model/safetensors_test_util.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

void RunOnThreads(int ranks, const EpModelCase& c) {
  auto group = LocalCommunicatorGroup::Create(ranks, {absl::Seconds(60)});
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<absl::Status> results(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] { results[r] = RunEpModelCase((*group)->rank(r), c); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) EXPECT_TRUE(results[r].ok()) << results[r];
}

struct LocalCase {
  std::string model;
  int ranks;
  EqualSplitMode mode;
  DType dtype;
};

class EpModelLocalTest : public ::testing::TestWithParam<LocalCase> {};

TEST_P(EpModelLocalTest, BitIdenticalToOneDevice) {
  const LocalCase& p = GetParam();
  RunOnThreads(p.ranks,
               {.model_dir = "models/" + p.model, .dtype = p.dtype, .equal_split = p.mode});
}

std::string CaseName(const ::testing::TestParamInfo<LocalCase>& info) {
  std::string name = absl::StrCat(info.param.model, "_p", info.param.ranks, "_",
                                  info.param.mode == EqualSplitMode::kAuto     ? "auto"
                                  : info.param.mode == EqualSplitMode::kAlways ? "always"
                                                                               : "never",
                                  "_", DTypeName(info.param.dtype));
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Models, EpModelLocalTest,
    ::testing::Values(LocalCase{"qwen3-moe-tiny", 1, EqualSplitMode::kAuto, DType::kF32},
                      LocalCase{"qwen3-moe-tiny", 2, EqualSplitMode::kAuto, DType::kF32},
                      LocalCase{"qwen3-moe-tiny", 2, EqualSplitMode::kAlways, DType::kF32},
                      LocalCase{"qwen3-moe-tiny", 2, EqualSplitMode::kNever, DType::kF32},
                      LocalCase{"qwen3-moe-tiny", 4, EqualSplitMode::kAuto, DType::kBF16},
                      LocalCase{"mixtral-tiny", 2, EqualSplitMode::kAuto, DType::kF32},
                      LocalCase{"mixtral-tiny", 4, EqualSplitMode::kNever, DType::kBF16},
                      LocalCase{"deepseek-v3-tiny", 2, EqualSplitMode::kAuto, DType::kF32},
                      LocalCase{"qwen2-moe-tiny", 4, EqualSplitMode::kAlways, DType::kF32}),
    CaseName);

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A copy of `dir` whose model.safetensors holds every tensor except the routed experts outside
// [first, first + count).
std::string CopyWithExperts(const std::string& dir, int64_t first, int64_t count) {
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return "";
  std::vector<TensorSpec> specs;
  for (const std::string& name : (*file)->names()) {
    const size_t at = name.find(".experts.");
    if (at != std::string::npos) {
      const int64_t e = std::stoll(name.substr(at + 9));
      if (e < first || e >= first + count) continue;
    }
    const SafetensorsEntry* entry = (*file)->Find(name);
    auto t = (*file)->Tensor(name);
    EXPECT_TRUE(t.ok()) << t.status();
    std::vector<int64_t> shape;
    for (int i = 0; i < entry->shape.rank(); ++i) shape.push_back(entry->shape.dim(i));
    specs.push_back({name, entry->dtype_name, shape,
                     std::string(reinterpret_cast<const char*>(t->data), t->byte_size)});
  }
  const std::string name = absl::StrCat("rank_experts_", first, "_", count);
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string out = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", name);
  mkdir(out.c_str(), 0755);
  for (const char* f : {"config.json", "generation_config.json"}) {
    WriteTempFile(absl::StrCat(name, "/", f), ReadFile(absl::StrCat(dir, "/", f)));
  }
  WriteTempFile(name + "/model.safetensors", Image(specs));
  return out;
}

TEST(EpModelLoadTest, RankReadsOnlyItsOwnExperts) {
  const std::string dir = "models/qwen3-moe-tiny";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto placement = ExpertPlacement::Create(config->moe.num_experts, 2);
  ASSERT_TRUE(placement.ok());
  const ExpertRange mine = placement->RangeOf(0);
  const std::string trimmed = CopyWithExperts(dir, mine.first, mine.count);
  ASSERT_FALSE(trimmed.empty());
  // One device needs every expert: the copy is refused, naming a missing expert of rank 1.
  auto dev = MakeCpuDevice(1);
  ASSERT_TRUE(dev.ok());
  auto whole = Model::Load(trimmed, {}, dev->backend.get(), dev->allocator.get());
  ASSERT_FALSE(whole.ok());
  EXPECT_TRUE(absl::StrContains(whole.status().message(), "missing tensor")) << whole.status();
  EXPECT_TRUE(
      absl::StrContains(whole.status().message(), absl::StrCat(".experts.", mine.end(), ".")))
      << whole.status();
  // Rank 0 of 2 loads it and the pair still gives the one-device bits.
  RunOnThreads(2, {.model_dir = dir, .rank0_dir = trimmed});
}

}  // namespace
}  // namespace moe::testing
