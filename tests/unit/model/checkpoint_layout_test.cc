#include "engine/model/checkpoint_layout.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/model/safetensors_index.h"
#include "gtest/gtest.h"
#include "tests/unit/model/safetensors_test_util.h"

namespace moe {
namespace {

// Test cwd is the runfiles root of this workspace; the shipped models are data of this test.
constexpr char kMixtral[] = "models/mixtral-tiny";
constexpr char kQwen3[] = "models/qwen3-moe-tiny";
constexpr char kQwen2[] = "models/qwen2-moe-tiny";
constexpr char kDeepseek[] = "models/deepseek-v3-tiny";
constexpr const char* kModels[] = {kMixtral, kQwen3, kQwen2, kDeepseek};

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& p : parts) {
    EXPECT_TRUE(absl::StrContains(status.message(), p)) << "expected \"" << p << "\" in " << status;
  }
}

bool IsSharded(const std::string& dir) {
  return SafetensorsFile::Open(dir + "/model.safetensors").status().code() ==
         absl::StatusCode::kNotFound;
}

std::unique_ptr<SafetensorsCheckpoint> OpenShipped(const std::string& dir) {
  auto ckpt = IsSharded(dir)
                  ? SafetensorsCheckpoint::OpenIndex(dir + "/model.safetensors.index.json")
                  : SafetensorsCheckpoint::OpenFile(dir + "/model.safetensors");
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  return ckpt.ok() ? std::move(*ckpt) : nullptr;
}

// One defect applied to a copy of a shipped checkpoint.
struct Mutation {
  std::string drop;     // a tensor to leave out
  std::string reshape;  // a tensor given `shape` (zero data of that size)
  std::vector<int64_t> shape;
  std::string retype;  // a tensor whose dtype becomes `dtype` (same bytes)
  std::string dtype = "I32";
  std::string add;  // a tensor to add: F32 [2]
};

struct Written {
  std::string path;   // the file, or the index of a sharded copy
  std::string shard;  // the file `add` / the last tensor went to
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
};

int64_t DTypeBytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "BF16" || dtype == "F16") return 2;
  if (dtype == "U8" || dtype == "BOOL") return 1;
  return 4;
}

// Copies the checkpoint of `dir` into $TEST_TMPDIR as files "<name>.<original file>", keeping the
// split into shards (with a rewritten index), and applies `m`.
Written WriteMutated(const std::string& dir, const std::string& name, const Mutation& m) {
  Written w;
  std::unique_ptr<SafetensorsCheckpoint> src = OpenShipped(dir);
  if (src == nullptr) return w;
  std::map<std::string, std::string> weight_map;
  for (size_t f = 0; f < src->files().size(); ++f) {
    const SafetensorsFile& file = *src->files()[f];
    const std::string base = file.path().substr(file.path().rfind('/') + 1);
    const std::string out_name = absl::StrCat(name, ".", base);
    std::vector<testing::TensorSpec> specs;
    for (const std::string& t : file.names()) {
      if (t == m.drop) continue;
      const SafetensorsEntry* e = file.Find(t);
      auto tensor = file.Tensor(t);
      EXPECT_TRUE(tensor.ok()) << tensor.status();
      testing::TensorSpec spec{
          t,
          e->dtype_name,
          {e->shape.begin(), e->shape.end()},
          std::string(reinterpret_cast<const char*>(tensor->data), tensor->byte_size)};
      if (t == m.reshape) {
        spec.shape = m.shape;
        int64_t n = 1;
        for (int64_t d : m.shape) n *= d;
        spec.bytes.assign(n * 4, '\0');
      }
      if (t == m.retype) {
        spec.dtype = m.dtype;
        spec.bytes.assign(e->shape.numel() * DTypeBytes(m.dtype), '\0');
      }
      specs.push_back(std::move(spec));
    }
    if (f + 1 == src->files().size() && !m.add.empty()) {
      specs.push_back({m.add, "F32", {2}, std::string(8, '\0')});
    }
    for (const auto& s : specs) weight_map[s.name] = out_name;
    w.shard = testing::WriteTempFile(out_name, testing::Image(specs));
  }
  if (src->files().size() == 1) {
    w.path = w.shard;
    auto ckpt = SafetensorsCheckpoint::OpenFile(w.path);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    if (ckpt.ok()) w.checkpoint = std::move(*ckpt);
    return w;
  }
  std::vector<std::string> entries;
  for (const auto& [t, file] : weight_map)
    entries.push_back(absl::StrCat("\"", t, "\": \"", file, "\""));
  w.path = testing::WriteTempFile(
      absl::StrCat(name, ".model.safetensors.index.json"),
      absl::StrCat("{\"weight_map\": {", absl::StrJoin(entries, ", "), "}}"));
  auto ckpt = SafetensorsCheckpoint::OpenIndex(w.path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (ckpt.ok()) w.checkpoint = std::move(*ckpt);
  return w;
}

ModelConfig Config(const std::string& dir) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig{};
}

const ExpectedTensor* FindExpected(const std::vector<ExpectedTensor>& all,
                                   const std::string& name) {
  for (const ExpectedTensor& t : all) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

TEST(CheckpointLayoutTest, EveryShippedCheckpointMatchesExactly) {
  for (const char* dir : kModels) {
    SCOPED_TRACE(dir);
    const ModelConfig config = Config(dir);
    std::unique_ptr<SafetensorsCheckpoint> ckpt = OpenShipped(dir);
    ASSERT_NE(ckpt, nullptr);
    EXPECT_TRUE(CheckCheckpoint(config, *ckpt).ok()) << CheckCheckpoint(config, *ckpt);
    // Nothing ignorable in the shipped files: the expected list is the whole checkpoint.
    EXPECT_EQ(ExpectedTensors(config).size(), ckpt->names().size());
  }
}

TEST(CheckpointLayoutTest, ShapesAndRolesOfEachFamily) {
  const auto mixtral = ExpectedTensors(Config(kMixtral));
  const ExpectedTensor* w2 =
      FindExpected(mixtral, "model.layers.1.block_sparse_moe.experts.7.w2.weight");
  ASSERT_NE(w2, nullptr);
  EXPECT_EQ(w2->shape, Shape({64, 96}));
  EXPECT_EQ(w2->role, TensorRole::kExpert);
  EXPECT_EQ(w2->layer, 1);
  EXPECT_EQ(w2->expert, 7);

  const auto qwen3 = ExpectedTensors(Config(kQwen3));
  ASSERT_NE(FindExpected(qwen3, "model.layers.0.mlp.down_proj.weight"),
            nullptr);  // mlp_only_layers
  EXPECT_EQ(FindExpected(qwen3, "model.layers.0.mlp.down_proj.weight")->role,
            TensorRole::kDenseMlp);
  EXPECT_EQ(FindExpected(qwen3, "model.layers.1.self_attn.q_norm.weight")->shape, Shape({32}));

  const auto qwen2 = ExpectedTensors(Config(kQwen2));
  EXPECT_EQ(FindExpected(qwen2, "model.layers.1.mlp.shared_expert_gate.weight")->role,
            TensorRole::kSharedExpertGate);
  EXPECT_EQ(FindExpected(qwen2, "model.layers.1.self_attn.k_proj.bias")->shape, Shape({32}));
  EXPECT_EQ(FindExpected(qwen2, "model.layers.1.self_attn.o_proj.bias"), nullptr);

  ModelConfig deepseek = Config(kDeepseek);
  const auto ds = ExpectedTensors(deepseek);
  EXPECT_EQ(FindExpected(ds, "model.layers.2.mlp.gate.e_score_correction_bias")->role,
            TensorRole::kRouterBias);
  EXPECT_EQ(FindExpected(ds, "model.layers.2.self_attn.kv_a_proj_with_mqa.weight")->shape,
            Shape({40, 64}));
  EXPECT_EQ(FindExpected(ds, "model.layers.0.self_attn.q_proj.weight"), nullptr);
  // q_lora_rank null: one full-rank q_proj, no q_a / q_b.
  deepseek.mla.q_lora_rank = 0;
  const auto full_q = ExpectedTensors(deepseek);
  ASSERT_NE(FindExpected(full_q, "model.layers.0.self_attn.q_proj.weight"), nullptr);
  EXPECT_EQ(FindExpected(full_q, "model.layers.0.self_attn.q_proj.weight")->shape, Shape({96, 64}));
  EXPECT_EQ(FindExpected(full_q, "model.layers.0.self_attn.q_a_proj.weight"), nullptr);
  EXPECT_EQ(FindExpected(full_q, "model.layers.0.self_attn.q_b_proj.weight"), nullptr);
  // Tied embeddings: no lm_head.
  deepseek.tie_word_embeddings = true;
  EXPECT_EQ(FindExpected(ExpectedTensors(deepseek), "lm_head.weight"), nullptr);
}

TEST(CheckpointLayoutTest, IgnorableTensors) {
  const ModelConfig deepseek = Config(kDeepseek);  // 3 layers
  EXPECT_TRUE(IsIgnorableTensor(deepseek, "model.layers.3.eh_proj.weight"));
  EXPECT_FALSE(IsIgnorableTensor(deepseek, "model.layers.2.eh_proj.weight"));
  EXPECT_TRUE(IsIgnorableTensor(deepseek, "model.layers.0.self_attn.rotary_emb.inv_freq"));
  const ModelConfig mixtral = Config(kMixtral);  // 2 layers, no MTP
  EXPECT_FALSE(IsIgnorableTensor(mixtral, "model.layers.2.input_layernorm.weight"));
  EXPECT_TRUE(IsIgnorableTensor(mixtral, "model.layers.1.self_attn.rotary_emb.inv_freq"));
}

// A named broken copy of a shipped checkpoint and what its check must say.
struct BrokenCase {
  std::string name;
  const char* model;
  Mutation mutation;
  absl::StatusCode code;
  std::vector<std::string> parts;  // "@" stands for the file that holds the mutated tensor
  bool tie = false;                // config.tie_word_embeddings forced true
};

std::vector<BrokenCase> BrokenCases() {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  std::vector<BrokenCase> cases;
  cases.push_back(
      {"mixtral_missing_expert",
       kMixtral,
       {.drop = "model.layers.1.block_sparse_moe.experts.3.w3.weight"},
       kInvalid,
       {"1 problem", "missing tensor \"model.layers.1.block_sparse_moe.experts.3.w3.weight\"",
        "expected shape [96, 64]"}});
  cases.push_back({"mixtral_wrong_shape",
                   kMixtral,
                   {.reshape = "model.layers.0.self_attn.k_proj.weight", .shape = {64, 64}},
                   kInvalid,
                   {"@: tensor \"model.layers.0.self_attn.k_proj.weight\" has shape [64, 64], "
                    "expected [32, 64]"}});
  cases.push_back({"mixtral_unknown",
                   kMixtral,
                   {.add = "model.layers.0.block_sparse_moe.experts.8.w1.weight"},
                   kInvalid,
                   {"@: unknown tensor \"model.layers.0.block_sparse_moe.experts.8.w1.weight\""}});
  cases.push_back({"mixtral_layer_past_end",
                   kMixtral,
                   {.add = "model.layers.2.input_layernorm.weight"},
                   kInvalid,
                   {"unknown tensor \"model.layers.2.input_layernorm.weight\""}});
  cases.push_back(
      {"mixtral_i32",
       kMixtral,
       {.retype = "model.embed_tokens.weight"},
       kInvalid,
       {"@: tensor \"model.embed_tokens.weight\" has dtype I32, expected F32, BF16 or F16"}});
  cases.push_back({"mixtral_no_lm_head",
                   kMixtral,
                   {.drop = "lm_head.weight"},
                   kInvalid,
                   {"missing tensor \"lm_head.weight\" (expected shape [256, 64])"}});
  cases.push_back({"mixtral_tied_but_lm_head",
                   kMixtral,
                   {},
                   kInvalid,
                   {"@: unknown tensor \"lm_head.weight\""},
                   /*tie=*/true});
  cases.push_back(
      {"qwen3_missing_k_norm",
       kQwen3,
       {.drop = "model.layers.2.self_attn.k_norm.weight"},
       kInvalid,
       {"missing tensor \"model.layers.2.self_attn.k_norm.weight\" (expected shape [32])"}});
  cases.push_back({"qwen3_dense_layer_shape",
                   kQwen3,
                   {.reshape = "model.layers.0.mlp.down_proj.weight", .shape = {128, 64}},
                   kInvalid,
                   {"has shape [128, 64], expected [64, 128]"}});
  cases.push_back({"qwen3_f64_norm",
                   kQwen3,
                   {.retype = "model.norm.weight", .dtype = "F64"},
                   kInvalid,
                   {"@: tensor \"model.norm.weight\" has dtype F64"}});
  cases.push_back(
      {"qwen2_sharded_wrong_shape",
       kQwen2,
       {.reshape = "model.layers.1.mlp.shared_expert_gate.weight", .shape = {64}},
       kInvalid,
       {"@",
        "model-00004-of-00004.safetensors: tensor "
        "\"model.layers.1.mlp.shared_expert_gate.weight\" has shape [64], expected [1, 64]"}});
  cases.push_back({"qwen2_missing_bias",
                   kQwen2,
                   {.drop = "model.layers.0.self_attn.v_proj.bias"},
                   kInvalid,
                   {"(4 shards)", "missing tensor \"model.layers.0.self_attn.v_proj.bias\""}});
  cases.push_back({"qwen2_unknown_o_bias",
                   kQwen2,
                   {.add = "model.layers.1.self_attn.o_proj.bias"},
                   kInvalid,
                   {"@: unknown tensor \"model.layers.1.self_attn.o_proj.bias\""}});
  cases.push_back({"deepseek_missing_router_bias",
                   kDeepseek,
                   {.drop = "model.layers.1.mlp.gate.e_score_correction_bias"},
                   kInvalid,
                   {"missing tensor \"model.layers.1.mlp.gate.e_score_correction_bias\" (expected "
                    "shape [8])"}});
  cases.push_back(
      {"deepseek_kv_b_shape",
       kDeepseek,
       {.reshape = "model.layers.2.self_attn.kv_b_proj.weight", .shape = {96, 32}},
       kInvalid,
       {"\"model.layers.2.self_attn.kv_b_proj.weight\" has shape [96, 32], expected [128, 32]"}});
  cases.push_back(
      {"deepseek_shared_i32",
       kDeepseek,
       {.retype = "model.layers.1.mlp.shared_experts.up_proj.weight"},
       kInvalid,
       {"@: tensor \"model.layers.1.mlp.shared_experts.up_proj.weight\" has dtype I32"}});
  cases.push_back({"deepseek_dense_has_router",
                   kDeepseek,
                   {.add = "model.layers.0.mlp.gate.weight"},
                   kInvalid,
                   {"unknown tensor \"model.layers.0.mlp.gate.weight\""}});
  cases.push_back({"deepseek_no_lm_head",
                   kDeepseek,
                   {.drop = "lm_head.weight"},
                   kInvalid,
                   {"missing tensor \"lm_head.weight\""}});
  return cases;
}

TEST(CheckpointLayoutTest, BrokenCheckpointMatrix) {
  for (const BrokenCase& c : BrokenCases()) {
    SCOPED_TRACE(c.name);
    Written w = WriteMutated(c.model, c.name, c.mutation);
    ASSERT_NE(w.checkpoint, nullptr);
    ModelConfig config = Config(c.model);
    config.tie_word_embeddings = config.tie_word_embeddings || c.tie;
    const absl::Status status = CheckCheckpoint(config, *w.checkpoint);
    // The mutated tensor's file: look it up in the written checkpoint.
    const std::string& tensor = !c.mutation.reshape.empty()  ? c.mutation.reshape
                                : !c.mutation.retype.empty() ? c.mutation.retype
                                : !c.mutation.add.empty()    ? c.mutation.add
                                                             : std::string("lm_head.weight");
    const SafetensorsFile* file = w.checkpoint->FileOf(tensor);
    std::vector<std::string> parts;
    for (const std::string& p : c.parts) {
      if (p == "@" || absl::StrContains(p, "@:")) {
        ASSERT_NE(file, nullptr) << tensor;
        std::string q = p;
        q.replace(q.find('@'), 1, file->path());
        parts.push_back(q);
      } else {
        parts.push_back(p);
      }
    }
    ExpectError(status, c.code, parts);
    EXPECT_TRUE(absl::StrContains(status.message(), "1 problem")) << status;
  }
}

TEST(CheckpointLayoutTest, IgnorableTensorsPass) {
  Written mtp = WriteMutated(kDeepseek, "deepseek_mtp", {.add = "model.layers.3.eh_proj.weight"});
  ASSERT_NE(mtp.checkpoint, nullptr);
  EXPECT_TRUE(CheckCheckpoint(Config(kDeepseek), *mtp.checkpoint).ok());
  Written rotary =
      WriteMutated(kQwen2, "qwen2_rotary", {.add = "model.layers.0.self_attn.rotary_emb.inv_freq"});
  ASSERT_NE(rotary.checkpoint, nullptr);
  EXPECT_TRUE(CheckCheckpoint(Config(kQwen2), *rotary.checkpoint).ok());
}

TEST(CheckpointLayoutTest, HalfPrecisionWeightsPass) {
  for (const char* dtype : {"BF16", "F16"}) {
    Written w =
        WriteMutated(kMixtral, absl::StrCat("mixtral_", dtype),
                     {.retype = "model.layers.0.block_sparse_moe.gate.weight", .dtype = dtype});
    ASSERT_NE(w.checkpoint, nullptr);
    EXPECT_TRUE(CheckCheckpoint(Config(kMixtral), *w.checkpoint).ok()) << dtype;
  }
}

TEST(CheckpointLayoutTest, ReportsEveryProblemAndShowsTheFirstFew) {
  // Three defects of different kinds in one file, all reported.
  Written w = WriteMutated(kQwen3, "qwen3_three",
                           {.drop = "model.layers.1.mlp.experts.5.up_proj.weight",
                            .reshape = "model.layers.2.mlp.gate.weight",
                            .shape = {9, 64},
                            .retype = "model.layers.1.input_layernorm.weight",
                            .add = "model.extra.weight"});
  ASSERT_NE(w.checkpoint, nullptr);
  const absl::Status status = CheckCheckpoint(Config(kQwen3), *w.checkpoint);
  ExpectError(status, absl::StatusCode::kInvalidArgument,
              {w.path, ": 4 problems for qwen3_moe: ",
               "missing tensor \"model.layers.1.mlp.experts.5.up_proj.weight\"",
               "\"model.layers.2.mlp.gate.weight\" has shape [9, 64], expected [8, 64]",
               "\"model.layers.1.input_layernorm.weight\" has dtype I32",
               "unknown tensor \"model.extra.weight\""});
  EXPECT_FALSE(absl::StrContains(status.message(), "more")) << status;

  // A whole layer gone: 2 norms + 4 projections + 2 qk norms + router + 8 * 3 experts = 33,
  // the first kCheckpointProblemsShown shown.
  ModelConfig config = Config(kQwen3);
  config.num_hidden_layers = 4;
  config.layer_is_moe.push_back(true);
  config.layer_sliding.push_back(false);
  std::unique_ptr<SafetensorsCheckpoint> ckpt = OpenShipped(kQwen3);
  ASSERT_NE(ckpt, nullptr);
  const absl::Status many = CheckCheckpoint(config, *ckpt);
  ExpectError(
      many, absl::StatusCode::kInvalidArgument,
      {": 33 problems for qwen3_moe: ", "missing tensor \"model.layers.3.input_layernorm.weight\"",
       absl::StrCat("; and ", 33 - kCheckpointProblemsShown, " more")});
  EXPECT_FALSE(absl::StrContains(many.message(), "model.layers.3.mlp.experts.7")) << many;
}

}  // namespace
}  // namespace moe
