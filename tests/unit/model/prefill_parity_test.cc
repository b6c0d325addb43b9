// End-to-end golden parity of a prefill forward: a whole model assembled in this file from the
// engine's pieces (embedding, GqaAttention, DenseMlp, LoadMoeLayer, RmsNorm, Add, lm_head Gemm)
// runs each golden prompt alone in f32 on the CPU backend, and all positions' logits are
// compared with the transformers ones (tests/golden/<family>-tiny/logits_fp32.safetensors).
// Families with GQA attention: Mixtral, Qwen3-MoE, Qwen2-MoE (DeepSeek-V3's MLA is not built).
// This is a test of the pieces, not of the engine's model API.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "engine/core/tensor.h"
#include "engine/layers/attention/gqa_attention.h"
#include "engine/layers/mlp/dense_mlp.h"
#include "engine/layers/moe/moe_block.h"
#include "engine/model/model_config.h"
#include "engine/model/moe_layer_loader.h"
#include "engine/model/safetensors_index.h"
#include "engine/runtime/kv_block_manager.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_util.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

constexpr double kLogitsTol = 1e-4;  // max abs diff / max abs reference, f32
constexpr int64_t kBlockSize = 4;

// A host f32 tensor that owns its values.
struct HostTensor {
  std::vector<float> values;
  Shape shape;
  Tensor view() { return Tensor::Wrap(values.data(), Device::Cpu(), DType::kF32, shape); }
};

// Checkpoint tensor `name` as f32 values in aligned storage (safetensors data may be unaligned).
absl::StatusOr<HostTensor> ReadF32(const SafetensorsCheckpoint& ckpt, const std::string& name) {
  MOE_ASSIGN_OR_RETURN(SafetensorsTensor t, ckpt.Tensor(name));
  std::vector<uint64_t> aligned((t.byte_size + 7) / 8);
  std::memcpy(aligned.data(), t.data, t.byte_size);
  const std::vector<double> d = Decode(aligned.data(), t.shape.numel(), t.dtype);
  return HostTensor{std::vector<float>(d.begin(), d.end()), t.shape};
}

// One decoder layer: its norms, attention and either an MoE block or a dense MLP.
struct Layer {
  HostTensor input_norm;
  HostTensor post_attention_norm;
  std::unique_ptr<GqaAttention> attention;
  std::unique_ptr<MoeBlock> moe;
  std::unique_ptr<DenseMlp> mlp;
};

// The whole model, f32 on the CPU backend.
class PrefillModel {
 public:
  static absl::StatusOr<std::unique_ptr<PrefillModel>> Load(const std::string& dir,
                                                            Backend* backend,
                                                            Allocator* allocator) {
    auto m = std::unique_ptr<PrefillModel>(new PrefillModel(backend));
    MOE_ASSIGN_OR_RETURN(m->config_, LoadModelConfig(dir));
    // Qwen2-MoE ships sharded; the others as one file.
    const std::string index = dir + "/model.safetensors.index.json";
    MOE_ASSIGN_OR_RETURN(m->ckpt_,
                         std::ifstream(index).good()
                             ? SafetensorsCheckpoint::OpenIndex(index)
                             : SafetensorsCheckpoint::OpenFile(dir + "/model.safetensors"));
    const ModelConfig& c = m->config_;
    const SafetensorsCheckpoint& ckpt = *m->ckpt_;
    MOE_ASSIGN_OR_RETURN(m->embed_, ReadF32(ckpt, "model.embed_tokens.weight"));
    MOE_ASSIGN_OR_RETURN(m->final_norm_, ReadF32(ckpt, "model.norm.weight"));
    MOE_ASSIGN_OR_RETURN(
        m->lm_head_,
        ReadF32(ckpt, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      const std::string l = absl::StrCat("model.layers.", i, ".");
      Layer layer;
      MOE_ASSIGN_OR_RETURN(layer.input_norm, ReadF32(ckpt, l + "input_layernorm.weight"));
      MOE_ASSIGN_OR_RETURN(layer.post_attention_norm,
                           ReadF32(ckpt, l + "post_attention_layernorm.weight"));

      GqaAttentionConfig ac;
      ac.hidden = c.hidden_size;
      ac.heads = c.num_attention_heads;
      ac.kv_heads = c.num_key_value_heads;
      ac.head_dim = c.head_dim;
      ac.qkv_bias = c.attention_bias;
      ac.qk_norm = c.qk_norm;
      ac.rope_theta = c.rope.theta;
      ac.max_positions = c.max_position_embeddings;
      ac.sliding_window = c.layer_sliding.empty() || !c.layer_sliding[i] ? 0 : c.sliding_window;
      ac.rms_eps = static_cast<float>(c.rms_norm_eps);
      ac.dtype = DType::kF32;
      std::vector<HostTensor> held;  // keeps the host weights alive until Create has copied them
      const auto get = [&](const std::string& name, Tensor* out) -> absl::Status {
        MOE_ASSIGN_OR_RETURN(HostTensor t, ReadF32(ckpt, l + name));
        held.push_back(std::move(t));
        *out = held.back().view();
        return absl::OkStatus();
      };
      held.reserve(16);
      GqaAttentionWeights aw;
      MOE_RETURN_IF_ERROR(get("self_attn.q_proj.weight", &aw.q_proj));
      MOE_RETURN_IF_ERROR(get("self_attn.k_proj.weight", &aw.k_proj));
      MOE_RETURN_IF_ERROR(get("self_attn.v_proj.weight", &aw.v_proj));
      MOE_RETURN_IF_ERROR(get("self_attn.o_proj.weight", &aw.o_proj));
      if (c.attention_bias) {
        MOE_RETURN_IF_ERROR(get("self_attn.q_proj.bias", &aw.q_bias));
        MOE_RETURN_IF_ERROR(get("self_attn.k_proj.bias", &aw.k_bias));
        MOE_RETURN_IF_ERROR(get("self_attn.v_proj.bias", &aw.v_bias));
      }
      if (c.qk_norm) {
        MOE_RETURN_IF_ERROR(get("self_attn.q_norm.weight", &aw.q_norm));
        MOE_RETURN_IF_ERROR(get("self_attn.k_norm.weight", &aw.k_norm));
      }
      MOE_ASSIGN_OR_RETURN(layer.attention, GqaAttention::Create(ac, aw, backend, allocator));

      if (c.layer_is_moe[i]) {
        MOE_ASSIGN_OR_RETURN(layer.moe, LoadMoeLayer(c, ckpt, i, DType::kF32, backend, allocator));
      } else {
        DenseMlpConfig mc;
        mc.hidden = c.hidden_size;
        mc.inter = c.intermediate_size;
        mc.dtype = DType::kF32;
        DenseMlpWeights mw;
        MOE_RETURN_IF_ERROR(get("mlp.gate_proj.weight", &mw.gate_proj));
        MOE_RETURN_IF_ERROR(get("mlp.up_proj.weight", &mw.up_proj));
        MOE_RETURN_IF_ERROR(get("mlp.down_proj.weight", &mw.down_proj));
        MOE_ASSIGN_OR_RETURN(layer.mlp, DenseMlp::Create(mc, mw, backend, allocator));
      }
      m->layers_.push_back(std::move(layer));
    }
    return m;
  }

  // The logits [T, vocab] of one sequence `ids` run alone from position 0.
  absl::StatusOr<std::vector<float>> Prefill(const std::vector<int32_t>& ids) {
    const ModelConfig& c = config_;
    const int64_t t = static_cast<int64_t>(ids.size());
    const int64_t d = c.hidden_size, v = c.vocab_size;

    // One sequence (id 0) in a fresh paged cache per layer.
    const int64_t max_blocks = (t + kBlockSize - 1) / kBlockSize;
    MOE_ASSIGN_OR_RETURN(KvBlockManager blocks,
                         KvBlockManager::Create(max_blocks, kBlockSize, max_blocks));
    MOE_RETURN_IF_ERROR(blocks.AddSequence(0));
    MOE_RETURN_IF_ERROR(blocks.Reserve(0, t));
    std::vector<int32_t> positions(t), seq_ids(t, 0), slots(t), table(max_blocks);
    for (int64_t i = 0; i < t; ++i) positions[i] = static_cast<int32_t>(i);
    MOE_RETURN_IF_ERROR(blocks.FillSlotMapping(0, 0, t, slots.data()));
    MOE_RETURN_IF_ERROR(blocks.FillBlockTableRow(0, table.data(), max_blocks));
    const auto i32 = [](std::vector<int32_t>& x, Shape shape) {
      return Tensor::Wrap(x.data(), Device::Cpu(), DType::kI32, std::move(shape));
    };
    GqaAttentionBatch batch;
    batch.positions = i32(positions, {t});
    batch.seq_ids = i32(seq_ids, {t});
    batch.slot_mapping = i32(slots, {t});
    batch.block_tables = i32(table, {1, max_blocks});
    const int64_t cache_elems = max_blocks * kBlockSize * c.num_key_value_heads * c.head_dim;
    const Shape cache_shape = {max_blocks, kBlockSize, c.num_key_value_heads, c.head_dim};

    HostTensor x{std::vector<float>(t * d), {t, d}};
    HostTensor h{std::vector<float>(t * d), {t, d}};
    HostTensor y{std::vector<float>(t * d), {t, d}};
    MOE_RETURN_IF_ERROR(backend_->Embedding({.tokens = t,
                                             .ids = ids.data(),
                                             .vocab = v,
                                             .cols = d,
                                             .dtype = DType::kF32,
                                             .table = embed_.values.data(),
                                             .table_ld = d,
                                             .out = x.values.data(),
                                             .out_ld = d}));
    const auto rms_norm = [&](HostTensor& in, HostTensor& weight, HostTensor& out) {
      return backend_->RmsNorm({.rows = t,
                                .cols = d,
                                .dtype = DType::kF32,
                                .x = in.values.data(),
                                .x_ld = d,
                                .weight = weight.values.data(),
                                .eps = static_cast<float>(c.rms_norm_eps),
                                .out = out.values.data(),
                                .out_ld = d});
    };
    const auto add_to_x = [&](const Tensor& delta) {
      return backend_->Add({.n = t * d,
                            .dtype = DType::kF32,
                            .a = x.values.data(),
                            .b = delta.data(),
                            .out = x.values.data()});
    };

    for (Layer& layer : layers_) {
      std::vector<float> k_cache(cache_elems), v_cache(cache_elems);
      const KvCacheView cache{
          Tensor::Wrap(k_cache.data(), Device::Cpu(), DType::kF32, cache_shape),
          Tensor::Wrap(v_cache.data(), Device::Cpu(), DType::kF32, cache_shape)};
      // x += attention(input_layernorm(x))
      MOE_RETURN_IF_ERROR(rms_norm(x, layer.input_norm, h));
      MOE_RETURN_IF_ERROR(layer.attention->Forward(h.view(), batch, cache, y.view()));
      MOE_RETURN_IF_ERROR(add_to_x(y.view()));
      // x += moe_or_mlp(post_attention_layernorm(x))
      MOE_RETURN_IF_ERROR(rms_norm(x, layer.post_attention_norm, h));
      if (layer.moe != nullptr) {
        MOE_ASSIGN_OR_RETURN(Tensor out, layer.moe->Forward(h.view(), y.view()));
        MOE_RETURN_IF_ERROR(add_to_x(out));
      } else {
        MOE_RETURN_IF_ERROR(layer.mlp->Forward(h.view(), y.view()));
        MOE_RETURN_IF_ERROR(add_to_x(y.view()));
      }
    }

    // logits = norm(x) lm_head^T, lm_head [vocab, D].
    MOE_RETURN_IF_ERROR(rms_norm(x, final_norm_, h));
    std::vector<float> logits(t * v);
    MOE_RETURN_IF_ERROR(backend_->Gemm({.m = t,
                                        .n = v,
                                        .k = d,
                                        .a = h.values.data(),
                                        .a_dtype = DType::kF32,
                                        .lda = d,
                                        .b = lm_head_.values.data(),
                                        .b_dtype = DType::kF32,
                                        .ldb = d,
                                        .trans_b = true,
                                        .c = logits.data(),
                                        .c_dtype = DType::kF32,
                                        .ldc = v}));
    return logits;
  }

 private:
  explicit PrefillModel(Backend* backend) : backend_(backend) {}

  Backend* backend_;
  ModelConfig config_;
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
  HostTensor embed_;
  HostTensor final_norm_;
  HostTensor lm_head_;
  std::vector<Layer> layers_;
};

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t Argmax(const float* row, int64_t n) { return std::max_element(row, row + n) - row; }

class PrefillParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefillParityTest, Fp32LogitsMatchTransformers) {
  const std::string family = GetParam();
  auto dev = MakeCpuDevice();
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto model = PrefillModel::Load("models/" + family, dev->backend.get(), dev->allocator.get());
  ASSERT_TRUE(model.ok()) << model.status();

  const std::string golden_dir = "tests/golden/" + family;
  auto text = ReadText(golden_dir + "/golden.json");
  ASSERT_TRUE(text.ok()) << text.status();
  auto golden = ParseJson(*text, golden_dir + "/golden.json");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const JsonValue* prompts = golden->Find("prompts");
  ASSERT_NE(prompts, nullptr);
  ASSERT_FALSE(prompts->array().empty());
  auto ref_file = SafetensorsCheckpoint::OpenFile(golden_dir + "/logits_fp32.safetensors");
  ASSERT_TRUE(ref_file.ok()) << ref_file.status();

  for (size_t p = 0; p < prompts->array().size(); ++p) {
    SCOPED_TRACE(absl::StrCat(family, " prompt", p));
    std::vector<int32_t> ids;
    for (const JsonValue& id : prompts->array()[p].array()) {
      ids.push_back(static_cast<int32_t>(id.number()));
    }
    auto ref = ReadF32(**ref_file, absl::StrCat("prompt", p, ".logits"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    const int64_t t = static_cast<int64_t>(ids.size());
    ASSERT_EQ(ref->shape.rank(), 2);
    ASSERT_EQ(ref->shape.dim(0), t);
    const int64_t vocab = ref->shape.dim(1);

    auto got = (*model)->Prefill(ids);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(static_cast<int64_t>(got->size()), t * vocab);

    const double err = MaxRelError(std::vector<double>(got->begin(), got->end()),
                                   std::vector<double>(ref->values.begin(), ref->values.end()));
    std::cout << family << " prompt" << p << " (" << t << " tokens): rel err " << err << "\n";
    EXPECT_LT(err, kLogitsTol);
    const int64_t last = (t - 1) * vocab;
    EXPECT_EQ(Argmax(got->data() + last, vocab), Argmax(ref->values.data() + last, vocab));
  }
}

INSTANTIATE_TEST_SUITE_P(Families, PrefillParityTest,
                         ::testing::Values("mixtral-tiny", "qwen3-moe-tiny", "qwen2-moe-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace moe::testing
