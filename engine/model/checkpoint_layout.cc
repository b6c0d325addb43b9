#include "engine/model/checkpoint_layout.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "kernels/dtype.h"

namespace moe {
namespace {

class Layout {
 public:
  explicit Layout(const ModelConfig& c) : c_(c) {}

  std::vector<ExpectedTensor> Build() {
    const int64_t d = c_.hidden_size;
    Add("model.embed_tokens.weight", {c_.vocab_size, d}, TensorRole::kEmbedding);
    for (int64_t i = 0; i < c_.num_hidden_layers; ++i) {
      layer_ = i;
      prefix_ = absl::StrCat("model.layers.", i, ".");
      Add(prefix_ + "input_layernorm.weight", {d}, TensorRole::kNorm);
      Add(prefix_ + "post_attention_layernorm.weight", {d}, TensorRole::kNorm);
      if (c_.use_mla) {
        Mla();
      } else {
        Gqa();
      }
      if (c_.layer_is_moe[i]) {
        Moe();
      } else {
        Swiglu(prefix_ + "mlp.", c_.intermediate_size, TensorRole::kDenseMlp);
      }
    }
    layer_ = -1;
    Add("model.norm.weight", {d}, TensorRole::kNorm);
    if (!c_.tie_word_embeddings) Add("lm_head.weight", {c_.vocab_size, d}, TensorRole::kLmHead);
    return std::move(out_);
  }

 private:
  void Add(std::string name, Shape shape, TensorRole role, int64_t expert = -1) {
    out_.push_back({std::move(name), std::move(shape), role, layer_, expert});
  }

  void Gqa() {
    const int64_t d = c_.hidden_size;
    const int64_t q = c_.num_attention_heads * c_.head_dim;
    const int64_t kv = c_.num_key_value_heads * c_.head_dim;
    const std::string a = prefix_ + "self_attn.";
    // Mixtral has no attention biases whatever the config says; Qwen2-MoE none on o_proj.
    const bool bias = c_.attention_bias && c_.family != ModelFamily::kMixtral;
    const bool o_bias = bias && c_.family == ModelFamily::kQwen3Moe;
    Add(a + "q_proj.weight", {q, d}, TensorRole::kAttention);
    Add(a + "k_proj.weight", {kv, d}, TensorRole::kAttention);
    Add(a + "v_proj.weight", {kv, d}, TensorRole::kAttention);
    Add(a + "o_proj.weight", {d, q}, TensorRole::kAttention);
    if (bias) {
      Add(a + "q_proj.bias", {q}, TensorRole::kAttentionBias);
      Add(a + "k_proj.bias", {kv}, TensorRole::kAttentionBias);
      Add(a + "v_proj.bias", {kv}, TensorRole::kAttentionBias);
    }
    if (o_bias) Add(a + "o_proj.bias", {d}, TensorRole::kAttentionBias);
    if (c_.qk_norm) {
      Add(a + "q_norm.weight", {c_.head_dim}, TensorRole::kNorm);
      Add(a + "k_norm.weight", {c_.head_dim}, TensorRole::kNorm);
    }
  }

  void Mla() {
    const int64_t d = c_.hidden_size;
    const int64_t h = c_.num_attention_heads;
    const MlaConfig& m = c_.mla;
    const int64_t qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
    const std::string a = prefix_ + "self_attn.";
    if (m.q_lora_rank > 0) {
      Add(a + "q_a_proj.weight", {m.q_lora_rank, d}, TensorRole::kAttention);
      if (c_.attention_bias) Add(a + "q_a_proj.bias", {m.q_lora_rank}, TensorRole::kAttentionBias);
      Add(a + "q_a_layernorm.weight", {m.q_lora_rank}, TensorRole::kNorm);
      Add(a + "q_b_proj.weight", {h * qk, m.q_lora_rank}, TensorRole::kAttention);
    } else {
      Add(a + "q_proj.weight", {h * qk, d}, TensorRole::kAttention);
    }
    const int64_t kv_a = m.kv_lora_rank + m.qk_rope_head_dim;
    Add(a + "kv_a_proj_with_mqa.weight", {kv_a, d}, TensorRole::kAttention);
    if (c_.attention_bias) Add(a + "kv_a_proj_with_mqa.bias", {kv_a}, TensorRole::kAttentionBias);
    Add(a + "kv_a_layernorm.weight", {m.kv_lora_rank}, TensorRole::kNorm);
    Add(a + "kv_b_proj.weight", {h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank},
        TensorRole::kAttention);
    Add(a + "o_proj.weight", {d, h * m.v_head_dim}, TensorRole::kAttention);
    if (c_.attention_bias) Add(a + "o_proj.bias", {d}, TensorRole::kAttentionBias);
  }

  void Moe() {
    const int64_t d = c_.hidden_size;
    const MoeConfig& m = c_.moe;
    if (c_.family == ModelFamily::kMixtral) {
      const std::string b = prefix_ + "block_sparse_moe.";
      Add(b + "gate.weight", {m.num_experts, d}, TensorRole::kRouter);
      for (int64_t e = 0; e < m.num_experts; ++e) {
        const std::string x = absl::StrCat(b, "experts.", e, ".");
        Add(x + "w1.weight", {m.inter, d}, TensorRole::kExpert, e);
        Add(x + "w2.weight", {d, m.inter}, TensorRole::kExpert, e);
        Add(x + "w3.weight", {m.inter, d}, TensorRole::kExpert, e);
      }
      return;
    }
    const std::string b = prefix_ + "mlp.";
    Add(b + "gate.weight", {m.num_experts, d}, TensorRole::kRouter);
    if (c_.family == ModelFamily::kDeepseekV3) {
      // transformers registers the bias whatever topk_method is.
      Add(b + "gate.e_score_correction_bias", {m.num_experts}, TensorRole::kRouterBias);
    }
    for (int64_t e = 0; e < m.num_experts; ++e) {
      Swiglu(absl::StrCat(b, "experts.", e, "."), m.inter, TensorRole::kExpert, e);
    }
    const int64_t shared = m.num_shared_experts * m.shared_inter;
    if (shared == 0) return;
    if (c_.family == ModelFamily::kQwen2Moe) {
      Swiglu(b + "shared_expert.", shared, TensorRole::kSharedExpert);
      Add(b + "shared_expert_gate.weight", {1, d}, TensorRole::kSharedExpertGate);
    } else {
      Swiglu(b + "shared_experts.", shared, TensorRole::kSharedExpert);
    }
  }

  void Swiglu(const std::string& p, int64_t inter, TensorRole role, int64_t expert = -1) {
    const int64_t d = c_.hidden_size;
    Add(p + "gate_proj.weight", {inter, d}, role, expert);
    Add(p + "up_proj.weight", {inter, d}, role, expert);
    Add(p + "down_proj.weight", {d, inter}, role, expert);
  }

  const ModelConfig& c_;
  std::vector<ExpectedTensor> out_;
  int64_t layer_ = -1;
  std::string prefix_;
};

bool IsWeightDType(const SafetensorsEntry& e) {
  return e.supported &&
         (e.dtype == DType::kF32 || e.dtype == DType::kBF16 || e.dtype == DType::kF16);
}

// The checkpoint as a user knows it: its one file, or the folder of its shards.
std::string CheckpointName(const SafetensorsCheckpoint& checkpoint) {
  const auto& files = checkpoint.files();
  if (files.empty()) return "empty checkpoint";
  if (files.size() == 1) return files[0]->path();
  const std::string& first = files[0]->path();
  const size_t slash = first.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : first.substr(0, slash);
  return absl::StrCat(dir, " (", files.size(), " shards)");
}

}  // namespace

absl::string_view TensorRoleName(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbedding:
      return "embedding";
    case TensorRole::kNorm:
      return "norm";
    case TensorRole::kAttention:
      return "attention";
    case TensorRole::kAttentionBias:
      return "attention_bias";
    case TensorRole::kRouter:
      return "router";
    case TensorRole::kRouterBias:
      return "router_bias";
    case TensorRole::kExpert:
      return "expert";
    case TensorRole::kSharedExpert:
      return "shared_expert";
    case TensorRole::kSharedExpertGate:
      return "shared_expert_gate";
    case TensorRole::kDenseMlp:
      return "dense_mlp";
    case TensorRole::kLmHead:
      return "lm_head";
  }
  return "unknown";
}

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config) {
  return Layout(config).Build();
}

bool IsIgnorableTensor(const ModelConfig& config, absl::string_view name) {
  if (absl::EndsWith(name, ".rotary_emb.inv_freq")) return true;
  if (config.family != ModelFamily::kDeepseekV3) return false;
  constexpr absl::string_view kLayers = "model.layers.";
  if (!absl::ConsumePrefix(&name, kLayers)) return false;
  const size_t dot = name.find('.');
  if (dot == absl::string_view::npos) return false;
  int64_t layer = 0;
  return absl::SimpleAtoi(name.substr(0, dot), &layer) && layer >= config.num_hidden_layers;
}

std::vector<ExpectedTensor> ExpectedTensorsWithExperts(const std::vector<ExpectedTensor>& all,
                                                       int64_t first, int64_t count) {
  std::vector<ExpectedTensor> out;
  for (const ExpectedTensor& t : all) {
    if (t.expert < 0 || (t.expert >= first && t.expert < first + count)) out.push_back(t);
  }
  return out;
}

absl::Status CheckCheckpoint(const ModelConfig& config, const SafetensorsCheckpoint& checkpoint) {
  return CheckCheckpoint(config, checkpoint, ExpectedTensors(config));
}

absl::Status CheckCheckpoint(const ModelConfig& config, const SafetensorsCheckpoint& checkpoint,
                             const std::vector<ExpectedTensor>& needed) {
  std::vector<std::string> problems;
  const std::vector<ExpectedTensor> expected = ExpectedTensors(config);
  absl::flat_hash_set<absl::string_view> known;
  known.reserve(expected.size());
  for (const ExpectedTensor& t : expected) known.insert(t.name);
  for (const ExpectedTensor& t : needed) {
    const SafetensorsFile* file = checkpoint.FileOf(t.name);
    const SafetensorsEntry* entry = file == nullptr ? nullptr : file->Find(t.name);
    if (entry == nullptr) {
      problems.push_back(absl::StrCat("missing tensor \"", t.name, "\" (expected shape ",
                                      t.shape.ToString(), ")"));
      continue;
    }
    if (entry->shape != t.shape) {
      problems.push_back(absl::StrCat(file->path(), ": tensor \"", t.name, "\" has shape ",
                                      entry->shape.ToString(), ", expected ", t.shape.ToString()));
    }
    if (!IsWeightDType(*entry)) {
      problems.push_back(absl::StrCat(file->path(), ": tensor \"", t.name, "\" has dtype ",
                                      entry->dtype_name, ", expected F32, BF16 or F16"));
    }
  }
  for (const std::string& name : checkpoint.names()) {
    if (known.contains(name) || IsIgnorableTensor(config, name)) continue;
    const SafetensorsFile* file = checkpoint.FileOf(name);
    problems.push_back(absl::StrCat(file == nullptr ? CheckpointName(checkpoint) : file->path(),
                                    ": unknown tensor \"", name, "\""));
  }
  if (problems.empty()) return absl::OkStatus();

  const size_t shown = std::min<size_t>(problems.size(), kCheckpointProblemsShown);
  std::string message = absl::StrCat(CheckpointName(checkpoint), ": ", problems.size(),
                                     problems.size() == 1 ? " problem" : " problems", " for ",
                                     ModelFamilyName(config.family), ": ");
  absl::StrAppend(&message, absl::StrJoin(problems.begin(), problems.begin() + shown, "; "));
  if (shown < problems.size()) {
    absl::StrAppend(&message, "; and ", problems.size() - shown, " more");
  }
  return absl::InvalidArgumentError(message);
}

}  // namespace moe
