// config.json of a Hugging Face MoE checkpoint, read into a typed ModelConfig.
//
// Supported model_type values: "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3". Both the
// transformers 5.x layout (`rope_parameters`, `dtype`) and the 4.x one (`rope_theta` +
// `rope_scaling`, `torch_dtype`) are read; when both are present they must agree.
//
// Errors (every message starts with the source, the file path for LoadModelConfig):
//   NotFound         config.json is missing ("<dir>/config.json").
//   InvalidArgument  malformed JSON (with line:column); unknown model_type (naming the value
//                    and the supported list); a missing required field or one of the wrong
//                    JSON type (naming the field, with line:column); a value out of range
//                    (naming the field(s) and numbers, e.g. "num_key_value_heads=3 does not
//                    divide num_attention_heads=4").
//   Unimplemented    a valid setting that would change the math and that the engine does not
//                    implement, naming the field and value: hidden_act other than "silu",
//                    quantization_config, RoPE types other than default / yarn (linear with
//                    factor 1 is default), DeepSeek scoring_func other than "sigmoid" or
//                    topk_method other than "noaux_tc" / "greedy".
// Fields that do not change the math (dropout, aux-loss coefficients, router_jitter_noise,
// token ids, num_nextn_predict_layers: the MTP layers are skipped) are ignored.
//
// Optional fields and their defaults (those of transformers): num_key_value_heads =
// num_attention_heads; head_dim = hidden_size / num_attention_heads; tie_word_embeddings,
// attention_bias, use_sliding_window = false (Qwen2-MoE's qkv bias: qkv_bias, default true);
// decoder_sparse_step = 1; mlp_only_layers = []; moe_layer_freq = 1; norm_topk_prob = false
// (Qwen) / true (DeepSeek-V3); scoring_func = "sigmoid"; topk_method = "noaux_tc";
// rope_interleave = true (DeepSeek-V3); YaRN beta_fast = 32, beta_slow = 1, mscale = 0 (absent),
// mscale_all_dim = 0. Everything else a family uses is required.
#ifndef MOE_ENGINE_MODEL_MODEL_CONFIG_H_
#define MOE_ENGINE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/layers/moe/moe_config.h"
#include "kernels/dtype.h"

namespace moe {

enum class ModelFamily { kMixtral, kQwen3Moe, kQwen2Moe, kDeepseekV3 };

// The model_type string of a family ("mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3").
absl::string_view ModelFamilyName(ModelFamily family);

struct RopeConfig {
  enum class Scaling { kNone, kYarn };

  double theta = 10000.0;
  Scaling scaling = Scaling::kNone;
  // DeepSeek-V3: rotate interleaved pairs (x[2i], x[2i+1]) instead of the halves.
  bool interleave = false;
  // YaRN only (scaling == kYarn).
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;  // 0 = absent (HF: falsy), see kernels/rope_table.h
  double mscale_all_dim = 0.0;
};

// DeepSeek-V3 multi-head latent attention.
struct MlaConfig {
  int64_t q_lora_rank = 0;  // 0: q_proj is one full-rank projection (config value null)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
};

struct ModelConfig {
  ModelFamily family = ModelFamily::kMixtral;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  // Per-head q/k width. DeepSeek-V3: qk_nope_head_dim + qk_rope_head_dim (v: mla.v_head_dim).
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;  // the dense SwiGLU MLP (Mixtral has none: its expert size)
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 0.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // biases on q/k/v (Qwen2-MoE: true)
  bool qk_norm = false;         // RMSNorm on q and k per head (Qwen3-MoE)

  // Sliding-window attention: 0 = none. layer_sliding[i] says whether layer i uses it:
  // Mixtral and Qwen3-MoE every layer; Qwen2-MoE from layer_types, else (as transformers
  // derives it) layer i iff i is even and i < max_window_layers (default 28).
  int64_t sliding_window = 0;
  std::vector<bool> layer_sliding;

  RopeConfig rope;

  // layer_is_moe[i]: layer i has the MoE block `moe`, else a dense MLP of intermediate_size.
  std::vector<bool> layer_is_moe;
  // The MoE block of every MoE layer. moe.dtype is left at its default: the run dtype is an
  // engine option, not part of the checkpoint. moe.router_gemm / moe.route_weights follow the
  // family's transformers code (only bf16 runs differ): Mixtral run-dtype gate GEMM, fp32
  // weights; Qwen2/3-MoE run-dtype gate GEMM and weights; DeepSeek-V3 fp32 for both.
  MoeConfig moe;

  bool use_mla = false;  // DeepSeek-V3
  MlaConfig mla;

  // The checkpoint's dtype as written ("float32", "bfloat16"; `dtype` or `torch_dtype`); empty
  // if absent. has_dtype: whether it is one DType names.
  std::string dtype_name;
  bool has_dtype = false;
  DType dtype = DType::kF32;
};

// Parses config.json text. `source` names it in messages (a path). Errors as above.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);

// Reads <model_dir>/config.json and parses it. Errors as above.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_MODEL_CONFIG_H_
