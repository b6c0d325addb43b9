// moe_generate's expert-parallel flags: --equal-split's values, --expert-parallel-timeout-s at
// its limit, and their mapping into EngineOptions (the communicator stays the caller's).
#include "tools/generate_options.h"

#include <utility>

#include "gtest/gtest.h"

namespace moe::tools {
namespace {

GenerateOptions WithModel() {
  GenerateOptions o = DefaultGenerateOptions();
  o.model = "models/qwen3-moe-tiny";
  return o;
}

TEST(GenerateOptionsTest, EqualSplitValues) {
  using EqualSplit = EngineExpertParallel::EqualSplit;
  const std::pair<const char*, EqualSplit> good[] = {
      {"auto", EqualSplit::kAuto}, {"always", EqualSplit::kAlways}, {"never", EqualSplit::kNever}};
  for (const auto& [name, mode] : good) {
    GenerateOptions o = WithModel();
    o.equal_split = name;
    EXPECT_TRUE(CheckGenerateOptions(o).ok()) << name;
    const EngineOptions e = ToEngineOptions(o);
    EXPECT_EQ(e.expert_parallel.equal_split, mode) << name;
    EXPECT_EQ(e.expert_parallel.comm, nullptr);
  }
  GenerateOptions o = WithModel();
  o.equal_split = "sometimes";
  const absl::Status s = CheckGenerateOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "--equal-split=sometimes must be auto, always or never");
}

TEST(GenerateOptionsTest, TimeoutAtItsLimit) {
  GenerateOptions o = WithModel();
  o.expert_parallel_timeout_s = 1;
  EXPECT_TRUE(CheckGenerateOptions(o).ok());
  o.expert_parallel_timeout_s = 0;
  const absl::Status s = CheckGenerateOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "--expert-parallel-timeout-s=0 must be >= 1");
}

}  // namespace
}  // namespace moe::tools
