#include "engine/model/safetensors_index.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/model/safetensors_test_util.h"

namespace moe {
namespace {

using ::moe::testing::BytesOf;
using ::moe::testing::Image;
using ::moe::testing::TensorSpec;
using ::moe::testing::WriteTempFile;

// Each test writes its own folder's files, named <prefix>-*, so cases do not share state.
struct Shards {
  std::string index;
  std::string shard1;
  std::string shard2;
};

Shards WriteShards(absl::string_view prefix, absl::string_view weight_map,
                   const std::vector<TensorSpec>& one, const std::vector<TensorSpec>& two) {
  Shards s;
  s.shard1 = WriteTempFile(absl::StrCat(prefix, "-00001-of-00002.safetensors"), Image(one));
  s.shard2 = WriteTempFile(absl::StrCat(prefix, "-00002-of-00002.safetensors"), Image(two));
  s.index = WriteTempFile(
      absl::StrCat(prefix, ".safetensors.index.json"),
      absl::StrCat("{\"metadata\": {\"total_size\": 20}, \"weight_map\": {", weight_map, "}}"));
  return s;
}

std::string Map(absl::string_view prefix, absl::string_view tensor, int shard) {
  return absl::StrCat("\"", tensor, "\": \"", prefix, "-0000", shard, "-of-00002.safetensors\"");
}

TensorSpec F32(absl::string_view name, float v) {
  return {std::string(name), "F32", {1}, BytesOf(std::vector<float>{v})};
}

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& p : parts) {
    EXPECT_TRUE(absl::StrContains(status.message(), p)) << "expected \"" << p << "\" in " << status;
  }
}

TEST(SafetensorsIndexTest, ResolvesTensorsAcrossTwoShards) {
  const Shards s = WriteShards(
      "ok", absl::StrCat(Map("ok", "a", 1), ", ", Map("ok", "c", 1), ", ", Map("ok", "b", 2)),
      {F32("a", 1.0f), F32("c", 3.0f)}, {F32("b", 2.0f)});
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt =
      SafetensorsCheckpoint::OpenIndex(s.index);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_EQ((*ckpt)->FileOf("a")->path(), s.shard1);
  EXPECT_EQ((*ckpt)->FileOf("b")->path(), s.shard2);
  for (const auto& [name, want] :
       std::vector<std::pair<std::string, float>>{{"a", 1.0f}, {"b", 2.0f}, {"c", 3.0f}}) {
    absl::StatusOr<SafetensorsTensor> t = (*ckpt)->Tensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    float v;
    std::memcpy(&v, t->data, sizeof(v));
    EXPECT_EQ(v, want) << name;
  }
  ExpectError((*ckpt)->Tensor("z").status(), absl::StatusCode::kNotFound, {s.index, "\"z\""});
}

TEST(SafetensorsIndexTest, SingleFileCheckpoint) {
  const std::string path = WriteTempFile("single.safetensors", Image({F32("x", 5.0f)}));
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt =
      SafetensorsCheckpoint::OpenFile(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->names(), std::vector<std::string>{"x"});
  EXPECT_TRUE((*ckpt)->Tensor("x").ok());
}

TEST(SafetensorsIndexTest, MissingShardNamesShardIndexAndTensor) {
  const Shards s = WriteShards(
      "gone", absl::StrCat(Map("gone", "a", 1), ", \"b\": \"gone-missing.safetensors\""),
      {F32("a", 1.0f)}, {});
  ExpectError(SafetensorsCheckpoint::OpenIndex(s.index).status(), absl::StatusCode::kNotFound,
              {"gone-missing.safetensors", s.index, "\"b\""});
}

TEST(SafetensorsIndexTest, TensorListedButAbsentFromItsShard) {
  const Shards s =
      WriteShards("absent", absl::StrCat(Map("absent", "a", 1), ", ", Map("absent", "b", 2)),
                  {F32("a", 1.0f)}, {F32("c", 1.0f)});
  ExpectError(SafetensorsCheckpoint::OpenIndex(s.index).status(),
              absl::StatusCode::kInvalidArgument, {s.index, "\"b\"", s.shard2, "no such tensor"});
}

TEST(SafetensorsIndexTest, TensorInTwoShardsNamesBoth) {
  const Shards s = WriteShards("dup", absl::StrCat(Map("dup", "a", 1), ", ", Map("dup", "b", 2)),
                               {F32("a", 1.0f)}, {F32("a", 1.0f), F32("b", 2.0f)});
  ExpectError(SafetensorsCheckpoint::OpenIndex(s.index).status(),
              absl::StatusCode::kInvalidArgument,
              {s.index, "\"a\" is in both", s.shard1, s.shard2});
}

TEST(SafetensorsIndexTest, TensorInAShardButNotInTheIndex) {
  const Shards s =
      WriteShards("extra", absl::StrCat(Map("extra", "a", 1), ", ", Map("extra", "b", 2)),
                  {F32("a", 1.0f), F32("x", 0.0f)}, {F32("b", 2.0f)});
  ExpectError(SafetensorsCheckpoint::OpenIndex(s.index).status(),
              absl::StatusCode::kInvalidArgument,
              {s.index, "\"x\"", s.shard1, "not in the weight_map"});
}

TEST(SafetensorsIndexTest, DefectiveShardKeepsItsOwnMessage) {
  const std::string bad = WriteTempFile("badshard-00001-of-00001.safetensors", "short");
  const std::string index =
      WriteTempFile("badshard.safetensors.index.json",
                    "{\"weight_map\": {\"a\": \"badshard-00001-of-00001.safetensors\"}}");
  ExpectError(SafetensorsCheckpoint::OpenIndex(index).status(), absl::StatusCode::kInvalidArgument,
              {bad, "5 bytes"});
}

TEST(SafetensorsIndexTest, BadIndexFiles) {
  const std::string dir = std::getenv("TEST_TMPDIR");
  ExpectError(SafetensorsCheckpoint::OpenIndex(dir + "/none.index.json").status(),
              absl::StatusCode::kNotFound, {dir + "/none.index.json"});
  struct Case {
    std::string name;
    std::string text;
    std::string expect;
  };
  for (const Case& c : std::vector<Case>{
           {"bad_json", "{\"weight_map\": ", "unexpected end"},
           {"no_weight_map", "{\"metadata\": {}}", "\"weight_map\" must be an object"},
           {"weight_map_array", "{\"weight_map\": []}", "got array"},
           {"shard_not_string", "{\"weight_map\": {\"a\": 1}}",
            "tensor \"a\": shard must be a string, got number"},
           {"shard_absolute", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
            "shard \"/etc/passwd\" must be a relative path"},
           {"shard_parent", "{\"weight_map\": {\"a\": \"x/../../y.safetensors\"}}",
            "must be a relative path"},
       }) {
    const std::string path = WriteTempFile(c.name + ".index.json", c.text);
    ExpectError(SafetensorsCheckpoint::OpenIndex(path).status(), absl::StatusCode::kInvalidArgument,
                {path, c.expect});
  }
}

}  // namespace
}  // namespace moe
