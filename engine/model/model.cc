#include "engine/model/model.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/tensor.h"
#include "engine/dist/expert_placement.h"
#include "engine/layers/attention/gqa_attention.h"
#include "engine/layers/attention/mla_attention.h"
#include "engine/layers/host_weights.h"
#include "engine/layers/mlp/dense_mlp.h"
#include "engine/layers/moe/moe_block.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/moe_layer_loader.h"
#include "engine/model/safetensors_index.h"
#include "engine/model/tensor_source.h"
#include "kernels/status_macros.h"

namespace moe {

// One decoder layer: its two norms, GQA or MLA attention, and an MoE block or a dense MLP.
struct Model::Layer {
  std::unique_ptr<Buffer> input_norm;           // [hidden], run dtype
  std::unique_ptr<Buffer> post_attention_norm;  // [hidden], run dtype
  std::unique_ptr<GqaAttention> gqa;
  std::unique_ptr<MlaAttention> mla;
  std::unique_ptr<MoeBlock> moe;
  std::unique_ptr<EpMoeBlock> ep_moe;  // instead of moe, expert parallel
  std::unique_ptr<DenseMlp> mlp;
  int64_t cache_heads = 0;
  int64_t cache_head_dim = 0;
};

namespace {

// Batches up to this size never give an expert more rows than the CUDA backend's short-segment
// GEMM takes (CublasLtGemm::kDefaultSegmentMaxRows), so its one-launch device-count path runs,
// and with nothing waiting for the host such a step can be recorded as a graph.
constexpr int64_t kDeviceCountsMaxTokens = Model::kGraphMaxTokens;

// Step shapes tracked at most (seen, recorded or not recordable); beyond that the least
// recently seen one is forgotten.
constexpr size_t kMaxGraphs = 128;

// Block table widths of recorded steps: powers of two from 8, so a sequence growing by a block
// changes the shape only log2 times.
int64_t GraphTableWidth(int64_t blocks) {
  int64_t width = 8;
  while (width < blocks) width *= 2;
  return width;
}

std::atomic<int64_t> next_cache_id{1};

// The tensors of `config` named `name` (ExpectedTensors order), or null.
const ExpectedTensor* FindExpected(const std::vector<ExpectedTensor>& all,
                                   const std::string& name) {
  for (const ExpectedTensor& t : all) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Loads expected tensors by name from one staging of the source; the layer Create functions
// read them while it lives.
class LayerTensors {
 public:
  LayerTensors(const TensorSource& source, const std::vector<ExpectedTensor>& all)
      : all_(all), staging_(source.NewStaging()) {}

  absl::StatusOr<Tensor> Get(const std::string& name) {
    const ExpectedTensor* want = FindExpected(all_, name);
    if (want == nullptr) {
      return absl::InternalError(absl::StrCat("model: no expected tensor \"", name, "\""));
    }
    return staging_->Load(*want);
  }
  // Sets *out to tensor `name` if `present`, else leaves it "not given".
  absl::Status GetIf(bool present, const std::string& name, Tensor* out) {
    if (!present) return absl::OkStatus();
    MOE_ASSIGN_OR_RETURN(*out, Get(name));
    return absl::OkStatus();
  }

 private:
  const std::vector<ExpectedTensor>& all_;
  std::unique_ptr<TensorStaging> staging_;
};

absl::StatusOr<std::unique_ptr<Buffer>> UploadAs(const Tensor& host, DType dtype, Backend* backend,
                                                 Allocator* allocator) {
  return UploadHostAs(backend, allocator, {&host}, dtype);
}

absl::StatusOr<std::unique_ptr<GqaAttention>> LoadGqa(const ModelConfig& c, int layer,
                                                      LayerTensors& tensors, DType dtype,
                                                      bool batch_invariant, Backend* backend,
                                                      Allocator* allocator) {
  const std::string l = absl::StrCat("model.layers.", layer, ".self_attn.");
  GqaAttentionConfig ac;
  ac.hidden = c.hidden_size;
  ac.heads = c.num_attention_heads;
  ac.kv_heads = c.num_key_value_heads;
  ac.head_dim = c.head_dim;
  ac.qkv_bias = c.attention_bias;
  ac.qk_norm = c.qk_norm;
  ac.rope_theta = c.rope.theta;
  ac.max_positions = c.max_position_embeddings;
  ac.sliding_window = static_cast<size_t>(layer) < c.layer_sliding.size() && c.layer_sliding[layer]
                          ? c.sliding_window
                          : 0;
  ac.rms_eps = static_cast<float>(c.rms_norm_eps);
  ac.dtype = dtype;
  ac.batch_invariant = batch_invariant;
  GqaAttentionWeights w;
  MOE_ASSIGN_OR_RETURN(w.q_proj, tensors.Get(l + "q_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.k_proj, tensors.Get(l + "k_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.v_proj, tensors.Get(l + "v_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.o_proj, tensors.Get(l + "o_proj.weight"));
  MOE_RETURN_IF_ERROR(tensors.GetIf(c.attention_bias, l + "q_proj.bias", &w.q_bias));
  MOE_RETURN_IF_ERROR(tensors.GetIf(c.attention_bias, l + "k_proj.bias", &w.k_bias));
  MOE_RETURN_IF_ERROR(tensors.GetIf(c.attention_bias, l + "v_proj.bias", &w.v_bias));
  MOE_RETURN_IF_ERROR(tensors.GetIf(c.qk_norm, l + "q_norm.weight", &w.q_norm));
  MOE_RETURN_IF_ERROR(tensors.GetIf(c.qk_norm, l + "k_norm.weight", &w.k_norm));
  return GqaAttention::Create(ac, w, backend, allocator);
}

absl::StatusOr<std::unique_ptr<MlaAttention>> LoadMla(const ModelConfig& c, int layer,
                                                      LayerTensors& tensors, DType dtype,
                                                      bool batch_invariant, Backend* backend,
                                                      Allocator* allocator) {
  const std::string l = absl::StrCat("model.layers.", layer, ".self_attn.");
  MlaAttentionConfig ac;
  ac.hidden = c.hidden_size;
  ac.heads = c.num_attention_heads;
  ac.q_lora_rank = c.mla.q_lora_rank;
  ac.kv_lora_rank = c.mla.kv_lora_rank;
  ac.qk_nope_head_dim = c.mla.qk_nope_head_dim;
  ac.qk_rope_head_dim = c.mla.qk_rope_head_dim;
  ac.v_head_dim = c.mla.v_head_dim;
  ac.attention_bias = c.attention_bias;
  ac.rope_interleave = c.rope.interleave;
  ac.rope_theta = c.rope.theta;
  const bool yarn = c.rope.scaling == RopeConfig::Scaling::kYarn;
  ac.rope_type = yarn ? RopeScalingType::kYarn : RopeScalingType::kDefault;
  ac.yarn_factor = c.rope.factor;
  ac.original_max_position_embeddings = c.rope.original_max_position_embeddings;
  ac.beta_fast = c.rope.beta_fast;
  ac.beta_slow = c.rope.beta_slow;
  ac.mscale = c.rope.mscale;
  ac.mscale_all_dim = c.rope.mscale_all_dim;
  ac.max_positions = c.max_position_embeddings;
  // HF builds q_a_layernorm and kv_a_layernorm with RMSNorm's default eps, not rms_norm_eps.
  ac.rms_eps = 1e-6f;
  ac.dtype = dtype;
  ac.batch_invariant = batch_invariant;
  const bool lora = c.mla.q_lora_rank > 0;
  MlaAttentionWeights w;
  MOE_RETURN_IF_ERROR(tensors.GetIf(lora, l + "q_a_proj.weight", &w.q_a_proj));
  MOE_RETURN_IF_ERROR(tensors.GetIf(lora, l + "q_a_layernorm.weight", &w.q_a_layernorm));
  MOE_RETURN_IF_ERROR(tensors.GetIf(lora, l + "q_b_proj.weight", &w.q_b_proj));
  MOE_RETURN_IF_ERROR(tensors.GetIf(!lora, l + "q_proj.weight", &w.q_proj));
  MOE_ASSIGN_OR_RETURN(w.kv_a_proj_with_mqa, tensors.Get(l + "kv_a_proj_with_mqa.weight"));
  MOE_ASSIGN_OR_RETURN(w.kv_a_layernorm, tensors.Get(l + "kv_a_layernorm.weight"));
  MOE_ASSIGN_OR_RETURN(w.kv_b_proj, tensors.Get(l + "kv_b_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.o_proj, tensors.Get(l + "o_proj.weight"));
  const bool bias = c.attention_bias;
  MOE_RETURN_IF_ERROR(tensors.GetIf(bias && lora, l + "q_a_proj.bias", &w.q_a_bias));
  MOE_RETURN_IF_ERROR(tensors.GetIf(bias, l + "kv_a_proj_with_mqa.bias", &w.kv_a_bias));
  MOE_RETURN_IF_ERROR(tensors.GetIf(bias, l + "o_proj.bias", &w.o_bias));
  return MlaAttention::Create(ac, w, backend, allocator);
}

absl::StatusOr<std::unique_ptr<DenseMlp>> LoadDenseMlp(const ModelConfig& c, int layer,
                                                       LayerTensors& tensors, DType dtype,
                                                       bool batch_invariant, Backend* backend,
                                                       Allocator* allocator) {
  const std::string l = absl::StrCat("model.layers.", layer, ".mlp.");
  DenseMlpConfig mc;
  mc.hidden = c.hidden_size;
  mc.inter = c.intermediate_size;
  mc.dtype = dtype;
  mc.batch_invariant = batch_invariant;
  DenseMlpWeights w;
  MOE_ASSIGN_OR_RETURN(w.gate_proj, tensors.Get(l + "gate_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.up_proj, tensors.Get(l + "up_proj.weight"));
  MOE_ASSIGN_OR_RETURN(w.down_proj, tensors.Get(l + "down_proj.weight"));
  return DenseMlp::Create(mc, w, backend, allocator);
}

// Bytes of all expected tensors in the run dtype, plus the packed copy of a tied lm_head.
int64_t WeightBytes(const ModelConfig& c, const std::vector<ExpectedTensor>& all, DType dtype) {
  int64_t elems = 0;
  for (const ExpectedTensor& t : all) elems += t.shape.numel();
  if (c.tie_word_embeddings) elems += c.vocab_size * c.hidden_size;
  return elems * static_cast<int64_t>(DTypeSize(dtype));
}

}  // namespace

Model::Model(const ModelConfig& config, const ModelOptions& options, Backend* backend,
             Allocator* allocator)
    : config_(config), options_(options), backend_(backend), allocator_(allocator) {}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& model_dir,
                                                   const ModelOptions& options, Backend* backend,
                                                   Allocator* allocator) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("model: run dtype ", DTypeName(options.dtype),
                                                   " is not supported (f32 or bf16)"));
  }
  MOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  Communicator* const comm = options.expert_parallel.comm;
  // The tensors this process reads: all, or an expert-parallel rank's.
  std::vector<ExpectedTensor> all = ExpectedTensors(config);
  if (comm != nullptr) {
    MOE_ASSIGN_OR_RETURN(const ExpertPlacement placement,
                         ExpertPlacement::Create(config.moe.num_experts, comm->size()));
    const ExpertRange mine = placement.RangeOf(comm->rank());
    all = ExpectedTensorsWithExperts(all, mine.first, mine.count);
  }
  // Random weights: no checkpoint to open or check; the rest is the checkpoint's code path.
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
  std::unique_ptr<TensorSource> source;
  if (options.random_weights) {
    source = std::make_unique<RandomTensorSource>(options.random_seed, RandomWeightDType(config));
  } else {
    MOE_ASSIGN_OR_RETURN(checkpoint, SafetensorsCheckpoint::OpenDir(model_dir));
    MOE_RETURN_IF_ERROR(CheckCheckpoint(config, *checkpoint, all));
    source = std::make_unique<CheckpointTensorSource>(*checkpoint);
  }

  std::unique_ptr<Model> m(new Model(config, options, backend, allocator));
  m->backend_records_graphs_ = backend->RecordsOpGraphs();
  const DType dtype = options.dtype;
  m->weight_bytes_ = WeightBytes(config, all, dtype);
  {
    LayerTensors tensors(*source, all);
    MOE_ASSIGN_OR_RETURN(Tensor embed, tensors.Get("model.embed_tokens.weight"));
    MOE_ASSIGN_OR_RETURN(Tensor norm, tensors.Get("model.norm.weight"));
    Tensor head = embed;
    if (!config.tie_word_embeddings) {
      MOE_ASSIGN_OR_RETURN(head, tensors.Get("lm_head.weight"));
    }
    // lm_head and the embedding table are both [vocab, hidden]: the table's buffer serves as
    // lm_head's packing source first and takes the table after, so the largest matrices of
    // the model need no scratch buffer (fresh memory costs its page faults on every load).
    MOE_ASSIGN_OR_RETURN(m->embed_, UploadAs(head, dtype, backend, allocator));
    MOE_ASSIGN_OR_RETURN(
        m->lm_head_,
        PackDeviceLinear(backend, m->embed_->data(), config.vocab_size, config.hidden_size, dtype));
    if (!config.tie_word_embeddings) {
      MOE_RETURN_IF_ERROR(CopyHostAs(backend, {&embed}, dtype, m->embed_->data()));
    }
    MOE_ASSIGN_OR_RETURN(m->final_norm_, UploadAs(norm, dtype, backend, allocator));
  }
  const int64_t steps = config.num_hidden_layers + 1;
  const auto progress = [&](int64_t done) {
    if (options.on_load_progress) options.on_load_progress(done, steps);
  };
  progress(1);
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    // One layer's staging at a time: host memory peaks at one layer's weights.
    LayerTensors tensors(*source, all);
    auto layer = std::make_unique<Layer>();
    const std::string l = absl::StrCat("model.layers.", i, ".");
    MOE_ASSIGN_OR_RETURN(Tensor in_norm, tensors.Get(l + "input_layernorm.weight"));
    MOE_ASSIGN_OR_RETURN(layer->input_norm, UploadAs(in_norm, dtype, backend, allocator));
    MOE_ASSIGN_OR_RETURN(Tensor post_norm, tensors.Get(l + "post_attention_layernorm.weight"));
    MOE_ASSIGN_OR_RETURN(layer->post_attention_norm,
                         UploadAs(post_norm, dtype, backend, allocator));
    if (config.use_mla) {
      MOE_ASSIGN_OR_RETURN(layer->mla, LoadMla(config, i, tensors, dtype, options.batch_invariant,
                                               backend, allocator));
      layer->cache_heads = layer->mla->cache_heads();
      layer->cache_head_dim = layer->mla->cache_head_dim();
    } else {
      MOE_ASSIGN_OR_RETURN(layer->gqa, LoadGqa(config, i, tensors, dtype, options.batch_invariant,
                                               backend, allocator));
      layer->cache_heads = layer->gqa->cache_heads();
      layer->cache_head_dim = layer->gqa->cache_head_dim();
    }
    if (config.layer_is_moe[i] && comm != nullptr) {
      MOE_ASSIGN_OR_RETURN(
          layer->ep_moe, LoadEpMoeLayer(config, *source, i, dtype, comm,
                                        {options.expert_parallel.equal_split}, backend, allocator));
      layer->ep_moe->block().set_batch_invariant(options.batch_invariant);
    } else if (config.layer_is_moe[i]) {
      MOE_ASSIGN_OR_RETURN(layer->moe, LoadMoeLayer(config, *source, i, dtype, backend, allocator));
      layer->moe->set_batch_invariant(options.batch_invariant);
      // On a GPU, decode-sized batches keep the expert counts on the device, so a step does not
      // wait for each layer's routing (MoeBlock::set_counts_on_device_max_tokens).
      if (backend->device().type != DeviceType::kCpu) {
        layer->moe->set_counts_on_device_max_tokens(kDeviceCountsMaxTokens);
      }
    } else {
      MOE_ASSIGN_OR_RETURN(layer->mlp, LoadDenseMlp(config, i, tensors, dtype,
                                                    options.batch_invariant, backend, allocator));
    }
    m->expert_tokens_.emplace_back(config.layer_is_moe[i] ? config.moe.num_experts : 0, 0);
    m->layers_.push_back(std::move(layer));
    progress(i + 2);
  }
  return m;
}

void Model::set_equal_split(EqualSplitMode mode) {
  for (auto& layer : layers_) {
    if (layer->ep_moe != nullptr) layer->ep_moe->set_equal_split(mode);
  }
}

std::vector<ExchangePath> Model::last_exchange_paths() const {
  std::vector<ExchangePath> paths;
  for (const auto& layer : layers_) {
    if (layer->ep_moe != nullptr) paths.push_back(layer->ep_moe->last_trace().exchange_path);
  }
  return paths;
}

int64_t Model::KvBytesPerBlock(int64_t block_size) const {
  int64_t elems = 0;
  for (const auto& layer : layers_) elems += 2 * layer->cache_heads * layer->cache_head_dim;
  return elems * block_size * static_cast<int64_t>(DTypeSize(options_.dtype));
}

absl::StatusOr<std::unique_ptr<KvCache>> Model::AllocateKvCache(int64_t num_blocks,
                                                                int64_t block_size) {
  if (num_blocks < 1 || block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv cache: num_blocks=", num_blocks, " and block_size=", block_size, " must both be >= 1"));
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->id_ = next_cache_id.fetch_add(1);
  cache->num_blocks_ = num_blocks;
  cache->block_size_ = block_size;
  for (const auto& layer : layers_) {
    const size_t bytes =
        static_cast<size_t>(num_blocks * block_size * layer->cache_heads * layer->cache_head_dim) *
        DTypeSize(options_.dtype);
    // Left uninitialised: attention reads only positions that KvWrite has written.
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> k, allocator_->Allocate(bytes));
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> v, allocator_->Allocate(bytes));
    cache->k_.push_back(std::move(k));
    cache->v_.push_back(std::move(v));
    cache->bytes_ += static_cast<int64_t>(2 * bytes);
  }
  return cache;
}

namespace {

// Step activations: Model::scratch_ buffers sized for `tokens` rows (x, h, y, int arrays);
// Model::head_scratch_ sized for the logit rows (at most one per sequence of the step).
enum ScratchSlot { kX, kH, kY, kInts, kNumScratch };
enum HeadScratchSlot { kHeadIn, kLogits, kLogitsF32, kNumHeadScratch };

absl::Status CheckBatch(const ModelBatch& b, const ModelConfig& c) {
  const size_t t = b.token_ids.size();
  const auto size_error = [&](const char* field, size_t got, size_t want) {
    return absl::InvalidArgumentError(
        absl::StrCat("model batch: ", field, " has ", got, " entries, expected ", want));
  };
  if (b.positions.size() != t) return size_error("positions", b.positions.size(), t);
  if (b.seq_ids.size() != t) return size_error("seq_ids", b.seq_ids.size(), t);
  if (b.slot_mapping.size() != t) return size_error("slot_mapping", b.slot_mapping.size(), t);
  if (b.num_seqs < 0 || b.max_blocks_per_seq < 0) {
    return absl::InvalidArgumentError(absl::StrCat("model batch: num_seqs=", b.num_seqs,
                                                   " and max_blocks_per_seq=", b.max_blocks_per_seq,
                                                   " must be >= 0"));
  }
  const size_t table = static_cast<size_t>(b.num_seqs * b.max_blocks_per_seq);
  if (b.block_tables.size() != table)
    return size_error("block_tables", b.block_tables.size(), table);
  for (size_t i = 0; i < t; ++i) {
    if (b.token_ids[i] < 0 || b.token_ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model batch: token_ids[", i, "]=", b.token_ids[i],
                       " is outside [0, vocab_size=", c.vocab_size, ")"));
    }
    if (b.positions[i] < 0 || b.positions[i] >= c.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("model batch: positions[", i, "]=", b.positions[i],
                       " is outside [0, max_position_embeddings=", c.max_position_embeddings, ")"));
    }
  }
  if (b.logit_rows.size() > t) {
    return absl::InvalidArgumentError(
        absl::StrCat("model batch: ", b.logit_rows.size(), " logit_rows for ", t, " tokens"));
  }
  for (size_t i = 0; i < b.logit_rows.size(); ++i) {
    if (b.logit_rows[i] < 0 || static_cast<size_t>(b.logit_rows[i]) >= t) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model batch: logit_rows[", i, "]=", b.logit_rows[i], " is outside [0, ", t, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Model::ReserveLogitRows(int64_t rows) {
  if (rows <= head_rows_) return absl::OkStatus();
  const int64_t d = config_.hidden_size, v = config_.vocab_size;
  const size_t es = DTypeSize(options_.dtype);
  const size_t sizes[kNumHeadScratch] = {
      static_cast<size_t>(rows * d) * es,  // normed rows, the lm_head GEMM's input
      static_cast<size_t>(rows * v) * es,  // logits in the run dtype
      // widened logits, or widened hidden states (ModelBatch::hidden_states)
      es == sizeof(float) ? 1 : static_cast<size_t>(rows * std::max(v, d)) * sizeof(float),
  };
  std::vector<std::unique_ptr<Buffer>> scratch;
  for (size_t size : sizes) {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> b, allocator_->Allocate(size));
    scratch.push_back(std::move(b));
  }
  ForgetGraphs();
  head_scratch_ = std::move(scratch);
  head_rows_ = rows;
  return absl::OkStatus();
}

absl::Status Model::ReserveTokens(int64_t tokens) {
  if (tokens <= scratch_tokens_) return absl::OkStatus();
  const int64_t d = config_.hidden_size;
  const size_t es = DTypeSize(options_.dtype);
  const size_t sizes[kNumScratch] = {
      static_cast<size_t>(tokens * d) * es,               // x
      static_cast<size_t>(tokens * d) * es,               // h
      static_cast<size_t>(tokens * d) * es,               // y
      static_cast<size_t>(5 * tokens) * sizeof(int32_t),  // ids, positions, seq_ids, slots, rows
  };
  std::vector<std::unique_ptr<Buffer>> scratch;
  for (size_t size : sizes) {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> b, allocator_->Allocate(size));
    scratch.push_back(std::move(b));
  }
  for (auto& layer : layers_) {
    if (layer->gqa != nullptr) MOE_RETURN_IF_ERROR(layer->gqa->ReserveTokens(tokens));
    if (layer->mla != nullptr) MOE_RETURN_IF_ERROR(layer->mla->ReserveTokens(tokens));
    if (layer->moe != nullptr) MOE_RETURN_IF_ERROR(layer->moe->ReserveTokens(tokens));
    if (layer->ep_moe != nullptr) {
      MOE_RETURN_IF_ERROR(layer->ep_moe->block().ReserveTokens(tokens));
    }
    if (layer->mlp != nullptr) MOE_RETURN_IF_ERROR(layer->mlp->ReserveTokens(tokens));
  }
  ForgetGraphs();
  scratch_ = std::move(scratch);
  scratch_tokens_ = tokens;
  return absl::OkStatus();
}

absl::Status Model::Forward(const ModelBatch& batch, KvCache& cache, std::vector<float>* logits) {
  MOE_ASSIGN_OR_RETURN(const float* device_logits, ForwardOnDevice(batch, cache));
  const size_t n =
      batch.logit_rows.size() *
      static_cast<size_t>(batch.hidden_states ? config_.hidden_size : config_.vocab_size);
  logits->assign(n, 0.0f);
  if (n == 0 || device_logits == nullptr) return absl::OkStatus();
  return backend_->CopyToHost(logits->data(), device_logits, n * sizeof(float));
}

void Model::ForgetGraphs() { graphs_.clear(); }

absl::Status Model::UploadBlockTables(const ModelBatch& batch, int64_t width) {
  const int64_t seqs = batch.num_seqs, have = batch.max_blocks_per_seq;
  const int32_t* host = batch.block_tables.data();
  if (width != have) {
    padded_tables_.assign(static_cast<size_t>(seqs * width), -1);
    for (int64_t s = 0; s < seqs; ++s) {
      std::copy_n(batch.block_tables.begin() + s * have, have, padded_tables_.begin() + s * width);
    }
    host = padded_tables_.data();
  }
  const size_t bytes = static_cast<size_t>(seqs * width) * sizeof(int32_t);
  if (tables_ == nullptr || tables_->size() < bytes) {
    size_t capacity = 256;
    while (capacity < bytes) capacity *= 2;
    ForgetGraphs();  // they read the old buffer
    MOE_ASSIGN_OR_RETURN(tables_, allocator_->Allocate(capacity));
  }
  if (bytes == 0) return absl::OkStatus();
  return backend_->CopyFromHost(tables_->data(), host, bytes);
}

absl::StatusOr<const float*> Model::ForwardOnDevice(const ModelBatch& batch, KvCache& cache) {
  MOE_RETURN_IF_ERROR(CheckBatch(batch, config_));
  const int64_t t = static_cast<int64_t>(batch.token_ids.size());
  const int64_t rows = static_cast<int64_t>(batch.logit_rows.size());
  if (cache.k_.size() != layers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("model: the KV cache has ", cache.k_.size(),
                                                   " layers, the model ", layers_.size()));
  }
  if (t == 0) {
    if (expert_parallel()) MOE_RETURN_IF_ERROR(EnqueueEmptyStep());
    return nullptr;
  }
  MOE_RETURN_IF_ERROR(ReserveTokens(t));
  MOE_RETURN_IF_ERROR(ReserveLogitRows(rows));

  // The int arrays go to the device once per step (a plain copy on the CPU backend).
  int32_t* ints = static_cast<int32_t*>(scratch_[kInts]->data());
  MOE_RETURN_IF_ERROR(backend_->CopyFromHost(ints, batch.token_ids.data(), t * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(ints + t, batch.positions.data(), t * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(ints + 2 * t, batch.seq_ids.data(), t * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(ints + 3 * t, batch.slot_mapping.data(), t * sizeof(int32_t)));
  if (rows > 0) {
    MOE_RETURN_IF_ERROR(
        backend_->CopyFromHost(ints + 4 * t, batch.logit_rows.data(), rows * sizeof(int32_t)));
  }
  // A step that may be recorded gets its tables padded to a width of few values (attention
  // reads only the columns a position reaches, so the padding changes no result).
  // Expert-parallel steps wait for their peers on the host: never recorded.
  const bool record = options_.record_step_graphs && backend_records_graphs_ &&
                      !expert_parallel() && t <= kGraphMaxTokens;
  StepShape shape;
  shape.tokens = t;
  shape.logit_rows = rows;
  shape.num_seqs = batch.num_seqs;
  shape.hidden_states = batch.hidden_states;
  shape.table_width = record ? GraphTableWidth(batch.max_blocks_per_seq) : batch.max_blocks_per_seq;
  MOE_RETURN_IF_ERROR(UploadBlockTables(batch, shape.table_width));

  bool replayed = false;
  if (record) {
    MOE_ASSIGN_OR_RETURN(replayed, ReplayStep(shape, cache));
  }
  if (!replayed) MOE_RETURN_IF_ERROR(EnqueueStep(shape, cache));
  if (rows == 0) return nullptr;
  // f32 rows: the normed hidden states as they are, else the f32 logits; bf16 rows widened.
  const bool f32 = options_.dtype == DType::kF32;
  const int64_t out = f32 ? (batch.hidden_states ? kHeadIn : kLogits) : kLogitsF32;
  return static_cast<const float*>(head_scratch_[out]->data());
}

absl::StatusOr<bool> Model::ReplayStep(const StepShape& shape, KvCache& cache) {
  const auto key = std::make_tuple(shape.tokens, shape.logit_rows, shape.num_seqs,
                                   shape.table_width, shape.hidden_states, cache.id_);
  if (graphs_.size() >= kMaxGraphs && graphs_.find(key) == graphs_.end()) {
    // The least recently used shape makes room (a server's batch shapes come and go).
    auto oldest = graphs_.begin();
    for (auto it = graphs_.begin(); it != graphs_.end(); ++it) {
      if (it->second.last_used < oldest->second.last_used) oldest = it;
    }
    graphs_.erase(oldest);
  }
  RecordedStep& step = graphs_[key];
  step.last_used = ++graph_clock_;
  if (step.failed) return false;
  if (step.graph == nullptr) {
    if (++step.seen < 2) return false;
    absl::StatusOr<std::unique_ptr<OpGraph>> graph =
        backend_->CaptureOps([&] { return EnqueueStep(shape, cache); });
    if (!graph.ok()) {
      // An op waits for the host or allocates: this shape runs op by op, now and later (a
      // real error shows when it does).
      step.failed = true;
      ++graph_stats_.failed;
      graph_stats_.last_failure = graph.status();
      return false;
    }
    step.graph = *std::move(graph);
    ++graph_stats_.recorded;
  }
  MOE_RETURN_IF_ERROR(step.graph->Replay());
  ++graph_stats_.replayed;
  return true;
}

absl::Status Model::EnqueueEmptyStep() {
  MOE_RETURN_IF_ERROR(ReserveTokens(1));
  const auto none = [&](int slot) {
    return Tensor::Wrap(scratch_[slot]->data(), backend_->device(), options_.dtype,
                        {0, config_.hidden_size});
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    EpMoeBlock* ep = layers_[i]->ep_moe.get();
    if (ep == nullptr) continue;
    MOE_RETURN_IF_ERROR(ep->Forward(none(kH), none(kY)).status());
    // The other ranks' tokens of this step count here too.
    const std::vector<int64_t>& counts = ep->last_trace().global_counts;
    for (size_t e = 0; e < counts.size(); ++e) expert_tokens_[i][e] += counts[e];
  }
  return absl::OkStatus();
}

absl::Status Model::EnqueueStep(const StepShape& shape, KvCache& cache) {
  const int64_t t = shape.tokens;
  const int64_t rows = shape.logit_rows;
  const int64_t d = config_.hidden_size, v = config_.vocab_size;
  const DType dtype = options_.dtype;
  int32_t* ints = static_cast<int32_t*>(scratch_[kInts]->data());
  int32_t* ids = ints;
  int32_t* positions = ints + t;
  int32_t* seq_ids = ints + 2 * t;
  int32_t* slots = ints + 3 * t;
  int32_t* logit_rows = ints + 4 * t;
  const Device dev = backend_->device();
  const auto i32 = [&](void* p, Shape shape) {
    return Tensor::Wrap(p, dev, DType::kI32, std::move(shape));
  };
  GqaAttentionBatch attn_batch;
  attn_batch.positions = i32(positions, {t});
  attn_batch.seq_ids = i32(seq_ids, {t});
  attn_batch.slot_mapping = i32(slots, {t});
  attn_batch.block_tables = i32(tables_->data(), {shape.num_seqs, shape.table_width});

  void* x = scratch_[kX]->data();
  void* h = scratch_[kH]->data();
  void* y = scratch_[kY]->data();
  const auto act = [&](void* p) { return Tensor::Wrap(p, dev, dtype, {t, d}); };
  const auto rms_norm = [&](const void* in, const Buffer& weight, void* out, int64_t n) {
    return backend_->RmsNorm({.rows = n,
                              .cols = d,
                              .dtype = dtype,
                              .x = in,
                              .x_ld = d,
                              .weight = weight.data(),
                              .eps = static_cast<float>(config_.rms_norm_eps),
                              .out = out,
                              .out_ld = d});
  };
  const auto add_to_x = [&](const void* delta) {
    return backend_->Add({.n = t * d, .dtype = dtype, .a = x, .b = delta, .out = x});
  };

  MOE_RETURN_IF_ERROR(backend_->Embedding({.tokens = t,
                                           .ids = ids,
                                           .vocab = v,
                                           .cols = d,
                                           .dtype = dtype,
                                           .table = embed_->data(),
                                           .table_ld = d,
                                           .out = x,
                                           .out_ld = d}));
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& layer = *layers_[i];
    const Shape cache_shape = {cache.num_blocks_, cache.block_size_, layer.cache_heads,
                               layer.cache_head_dim};
    const KvCacheView kv{Tensor::Wrap(cache.k_[i]->data(), dev, dtype, cache_shape),
                         Tensor::Wrap(cache.v_[i]->data(), dev, dtype, cache_shape)};
    // x += attention(input_layernorm(x))
    MOE_RETURN_IF_ERROR(rms_norm(x, *layer.input_norm, h, t));
    if (layer.mla != nullptr) {
      MOE_RETURN_IF_ERROR(layer.mla->Forward(act(h), attn_batch, kv, act(y)));
    } else {
      MOE_RETURN_IF_ERROR(layer.gqa->Forward(act(h), attn_batch, kv, act(y)));
    }
    MOE_RETURN_IF_ERROR(add_to_x(y));
    // x += moe_or_mlp(post_attention_layernorm(x))
    MOE_RETURN_IF_ERROR(rms_norm(x, *layer.post_attention_norm, h, t));
    if (layer.moe != nullptr || layer.ep_moe != nullptr) {
      MOE_ASSIGN_OR_RETURN(Tensor out, layer.moe != nullptr
                                           ? layer.moe->Forward(act(h), act(y))
                                           : layer.ep_moe->Forward(act(h), act(y)));
      MOE_RETURN_IF_ERROR(add_to_x(out.data()));
      // Expert parallel: every rank's tokens (the same numbers on every rank). One device:
      // empty when the counts stayed on the device (and while a step graph is recorded).
      const std::vector<int64_t>& counts = layer.moe != nullptr
                                               ? layer.moe->last_trace().counts
                                               : layer.ep_moe->last_trace().global_counts;
      for (size_t e = 0; e < counts.size(); ++e) expert_tokens_[i][e] += counts[e];
    } else {
      MOE_RETURN_IF_ERROR(layer.mlp->Forward(act(h), act(y)));
      MOE_RETURN_IF_ERROR(add_to_x(y));
    }
  }
  if (rows == 0) return absl::OkStatus();

  // logits = norm(x[logit_rows]) lm_head^T, rounded to the run dtype as HF's lm_head output
  // is, then widened to f32.
  void* head_in = head_scratch_[kHeadIn]->data();
  void* head_out = head_scratch_[kLogits]->data();
  MOE_RETURN_IF_ERROR(backend_->GatherRows({.rows = rows,
                                            .cols = d,
                                            .dtype = dtype,
                                            .src = x,
                                            .src_ld = d,
                                            .src_rows = t,
                                            .index = logit_rows,
                                            .dst = h,
                                            .dst_ld = d}));
  MOE_RETURN_IF_ERROR(rms_norm(h, *final_norm_, head_in, rows));
  if (shape.hidden_states) {
    if (dtype == DType::kF32) return absl::OkStatus();
    return backend_->Cast({.n = rows * d,
                           .src = head_in,
                           .src_dtype = dtype,
                           .dst = head_scratch_[kLogitsF32]->data(),
                           .dst_dtype = DType::kF32});
  }
  MOE_RETURN_IF_ERROR(backend_->Gemm({.m = rows,
                                      .n = v,
                                      .k = d,
                                      .a = head_in,
                                      .a_dtype = dtype,
                                      .lda = d,
                                      .b_dtype = dtype,
                                      .ldb = v,
                                      .c = head_out,
                                      .c_dtype = dtype,
                                      .ldc = v,
                                      .packed_b = lm_head_.get(),
                                      .row_invariant = options_.batch_invariant}));
  if (dtype == DType::kF32) return absl::OkStatus();
  return backend_->Cast({.n = rows * v,
                         .src = head_out,
                         .src_dtype = dtype,
                         .dst = head_scratch_[kLogitsF32]->data(),
                         .dst_dtype = DType::kF32});
}

}  // namespace moe
