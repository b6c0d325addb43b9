// A whole decoder-only MoE model of a supported family (Mixtral, Qwen3-MoE, Qwen2-MoE,
// DeepSeek-V3), assembled from engine/layers and loaded from a Hugging Face checkpoint folder.
//
// Forward computes, for one step's tokens (any mix of sequences in prefill and in decode):
//   x = embed(ids)
//   per layer: x += attention(input_layernorm(x)); x += moe_or_mlp(post_attention_layernorm(x))
//   logits = norm(x) lm_head^T            only for the rows the caller asks for, f32
// with Hugging Face semantics (tied or untied lm_head, DeepSeek-V3's first_k_dense_replace,
// Qwen3-MoE's decoder_sparse_step / mlp_only_layers). A token's logits are a deterministic
// function of the step's batch; across different batches they agree to rounding (GEMM kernels
// may round differently for different row counts).
//
// Load reads config.json, opens the checkpoint (one file or a sharded index), checks every
// tensor against ExpectedTensors before touching any (one Status listing the problems, naming
// file and tensor), converts each weight once to the run dtype and transforms it once into the
// engine's layout (fused w13, transposed w2, fused qkv, packed GEMM operands). The memory map
// is closed when Load returns. With ModelOptions::random_weights the weights are drawn instead
// (no checkpoint), through the same path.
//
// Thread-compatible: one thread at a time. The backend and allocator must outlive the model.
#ifndef MOE_ENGINE_MODEL_MODEL_H_
#define MOE_ENGINE_MODEL_MODEL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/buffer.h"
#include "engine/dist/communicator.h"
#include "engine/dist/ep_moe_block.h"
#include "engine/model/model_config.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe {

// One step's tokens, in host memory. Token t belongs to sequence row seq_ids[t] of
// block_tables, sits at absolute position positions[t] and writes its K / V to cache slot
// slot_mapping[t] (see KvBlockManager). Logits come back for the token rows listed in
// logit_rows, in that order.
struct ModelBatch {
  std::vector<int32_t> token_ids;     // [T]
  std::vector<int32_t> positions;     // [T]
  std::vector<int32_t> seq_ids;       // [T]
  std::vector<int32_t> slot_mapping;  // [T]
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], -1 = unused
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;  // token rows whose logits Forward returns
  // Return the final-norm hidden states of logit_rows (f32 [rows, hidden_size]: the lm_head's
  // input, widened) instead of their logits: the embedding call (Engine::Forward).
  bool hidden_states = false;
};

// The paged KV cache of every layer: per layer one K and one V array of
// [num_blocks, block_size, cache_heads, cache_head_dim] in the run dtype on the device.
class KvCache {
 public:
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t bytes() const { return bytes_; }

 private:
  friend class Model;
  KvCache() = default;
  int64_t id_ = 0;  // unique per process: the key of the op graphs recorded over this cache
  int64_t num_blocks_ = 0;
  int64_t block_size_ = 0;
  int64_t bytes_ = 0;
  std::vector<std::unique_ptr<Buffer>> k_;  // per layer
  std::vector<std::unique_ptr<Buffer>> v_;  // per layer
};

// Expert parallelism (engine/dist): the model is one rank of comm's group. Its MoE layers are
// EpMoeBlocks holding the full router and shared experts and only the rank's routed experts
// (ExpertPlacement: [r * E / P, (r + 1) * E / P)); the rank reads from the checkpoint the
// non-expert tensors and its own experts' tensors, nothing of the other experts (they may be
// missing from its copy). Everything else (embedding, attention, dense MLPs, lm_head) is
// replicated and runs on the rank's own tokens (attention data-parallel).
struct ExpertParallelOptions {
  Communicator* comm = nullptr;  // null: no expert parallelism; must outlive the model
  EqualSplitMode equal_split = EqualSplitMode::kAuto;
};

struct ModelOptions {
  DType dtype = DType::kF32;  // run dtype: f32 or bf16
  ExpertParallelOptions expert_parallel;
  // Random weights instead of the checkpoint's (vLLM's --load-format dummy), for benchmarks of
  // real shapes without their checkpoint: the folder needs only config.json, which is read and
  // validated as always; no safetensors file is opened (none need exist) and CheckCheckpoint is
  // skipped (nothing to check). Every tensor of ExpectedTensors is drawn from (random_seed, its
  // name) by RandomTensorSource (tensor_source.h: the values and their scales) in the config's
  // checkpoint dtype (RandomWeightDType: bf16 unless config.json says f32 / f16), a layer at a
  // time, and then takes the checkpoint's path (conversion to the run dtype, fusion, packing,
  // upload). The same seed gives the same weights on every machine and thread count.
  bool random_weights = false;
  uint64_t random_seed = 0;
  // Called during Load after each of the steps (embedding and lm_head, then every layer) with
  // (steps done, total steps), on the loading thread; may be empty.
  std::function<void(int64_t, int64_t)> on_load_progress;
  // Steps of at most kGraphMaxTokens tokens (decode) are recorded as a backend op graph (a CUDA
  // graph) the second time their shape (tokens, logit rows, sequences, block table width, cache)
  // is seen and replayed from then on: the same kernels with the same arguments, so the same
  // bits as running them one by one, at one launch per step. Ignored by a backend without
  // graphs (the CPU's); a step that cannot be recorded runs op by op.
  bool record_step_graphs = true;
  // Every GEMM of the model row-invariant (GemmArgs::row_invariant; MoeBlock::
  // set_batch_invariant): a sequence's logits do not depend on the other sequences of its batch
  // or on how its prompt was chunked, on every backend. The CPU backend is so anyway; on a GPU
  // it costs prefill speed (every GEMM on the own segment kernel, or one cuBLASLt algorithm
  // per shape for f32). Expert parallel ranks see other batches than one device, so their
  // bits equal one device's in this mode (and at any setting for steps of at most 64 tokens
  // per GEMM in bf16).
  bool batch_invariant = false;
};

class Model {
 public:
  // Loads <model_dir>. Errors: LoadModelConfig's (NotFound naming <model_dir>/config.json when
  // it is missing), the checkpoint's (NotFound for a missing model.safetensors / index naming
  // both, InvalidArgument naming file and tensor), CheckCheckpoint's (none of those three with
  // random_weights), InvalidArgument for a run dtype other than f32 / bf16, and the backend's
  // (ResourceExhausted when the weights do not fit).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& model_dir,
                                                     const ModelOptions& options, Backend* backend,
                                                     Allocator* allocator);
  ~Model();

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return options_.dtype; }
  // Device bytes of all weights as held (packed layouts included).
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes one KV cache block of block_size tokens takes over all layers (K and V).
  int64_t KvBytesPerBlock(int64_t block_size) const;

  // A cache of num_blocks blocks, uninitialised (every slot is written before it is read).
  // InvalidArgument for sizes < 1; ResourceExhausted from the allocator.
  absl::StatusOr<std::unique_ptr<KvCache>> AllocateKvCache(int64_t num_blocks, int64_t block_size);

  // Expert parallel (ModelOptions::expert_parallel): Forward and ForwardOnDevice are collective.
  // Every rank calls them in lockstep, each with a batch of its own sequences (its own cache
  // slots and block tables); T = 0 is allowed and still takes part in every MoE layer's
  // collectives. The logits are the rank's own rows.
  bool expert_parallel() const { return options_.expert_parallel.comm != nullptr; }
  const ExpertParallelOptions& expert_parallel_options() const { return options_.expert_parallel; }
  // Sets every MoE layer's equal-split mode (expert parallel only).
  void set_equal_split(EqualSplitMode mode);
  // The exchange path of each MoE layer's last Forward (expert parallel; empty otherwise).
  std::vector<ExchangePath> last_exchange_paths() const;

  // Runs the batch, writes its K / V into `cache` and returns the logits of logit_rows as f32
  // [logit_rows.size(), vocab_size] (hidden_size with batch.hidden_states) into `logits`
  // (resized). InvalidArgument naming the field for inconsistent array sizes, a token id
  // outside [0, vocab_size), a position outside [0, max_position_embeddings), a logit row
  // outside [0, T); the backend's errors for slots and blocks. T = 0 returns no logits.
  absl::Status Forward(const ModelBatch& batch, KvCache& cache, std::vector<float>* logits);

  // As Forward, but leaves the logits on the backend's device: f32 [logit_rows.size(),
  // vocab_size] (hidden_size with batch.hidden_states), valid until the next Forward /
  // ForwardOnDevice / ReserveTokens; null when there are no logit rows (or no tokens).
  absl::StatusOr<const float*> ForwardOnDevice(const ModelBatch& batch, KvCache& cache);

  // Grows every layer's workspace for steps of up to `tokens` tokens now (the lm_head's
  // buffers grow with the logit rows a Forward asks for).
  absl::Status ReserveTokens(int64_t tokens);

  // The largest step (tokens) ModelOptions::record_step_graphs records; with at most this many
  // tokens, the MoE blocks keep their expert counts on the device (no wait for the host).
  static constexpr int64_t kGraphMaxTokens = 64;
  // ModelOptions::record_step_graphs at work: a shape is recorded the second time it is seen
  // (the first runs op by op, so state ops make on first use exists before recording).
  struct StepGraphStats {
    int64_t recorded = 0;       // graphs made
    int64_t replayed = 0;       // steps run from a graph
    int64_t failed = 0;         // shapes that could not be recorded (they run op by op)
    absl::Status last_failure;  // why the last of those could not
  };
  const StepGraphStats& step_graph_stats() const { return graph_stats_; }

  // Rows routed to each expert of each layer since Load (a token counts once for each of its
  // top-k experts), [num_layers][num_experts], empty for dense layers. Counted where the counts
  // reach the host anyway: every CPU step; on a GPU only steps of more than kGraphMaxTokens
  // tokens (smaller ones keep the counts on the device and are not counted, so that a decode
  // step never waits for the routing). Expert parallel, every step, the tokens of every rank.
  const std::vector<std::vector<int64_t>>& expert_tokens() const { return expert_tokens_; }

 private:
  struct Layer;
  // What a step's ops depend on besides the contents of device memory.
  struct StepShape {
    int64_t tokens = 0;
    int64_t logit_rows = 0;
    int64_t num_seqs = 0;
    int64_t table_width = 0;     // block table columns as uploaded
    bool hidden_states = false;  // ModelBatch::hidden_states
  };
  // Enqueues the step's ops after the batch's arrays are on the device.
  absl::Status EnqueueStep(const StepShape& shape, KvCache& cache);
  // Expert parallel, T = 0 on this rank: every MoE layer's collectives with no rows.
  absl::Status EnqueueEmptyStep();
  // Replays the step's recorded graph, recording it first if its shape is new; false (nothing
  // enqueued) when the backend or the step cannot be recorded.
  absl::StatusOr<bool> ReplayStep(const StepShape& shape, KvCache& cache);
  // Uploads the block tables as [num_seqs, width], padded with -1.
  absl::Status UploadBlockTables(const ModelBatch& batch, int64_t width);
  // Forgets the recorded graphs (the buffers they use were reallocated).
  void ForgetGraphs();
  Model(const ModelConfig& config, const ModelOptions& options, Backend* backend,
        Allocator* allocator);

  ModelConfig config_;
  ModelOptions options_;
  Backend* backend_;
  Allocator* allocator_;
  int64_t weight_bytes_ = 0;
  std::unique_ptr<Buffer> embed_;           // [vocab, hidden], run dtype
  std::unique_ptr<Buffer> final_norm_;      // [hidden], run dtype
  std::unique_ptr<PackedWeights> lm_head_;  // B = lm_head^T [hidden, vocab]
  std::vector<std::unique_ptr<Layer>> layers_;
  // Grows head_scratch_ (lm_head input and logits) for `rows` logit rows.
  absl::Status ReserveLogitRows(int64_t rows);

  std::vector<std::unique_ptr<Buffer>> scratch_;  // step activations, grown on demand
  int64_t scratch_tokens_ = 0;
  std::vector<std::unique_ptr<Buffer>> head_scratch_;  // lm_head rows, grown on demand
  int64_t head_rows_ = 0;
  std::unique_ptr<Buffer> tables_;      // the step's block tables on the device
  std::vector<int32_t> padded_tables_;  // host staging of padded block tables

  struct RecordedStep {
    int64_t seen = 0;
    int64_t last_used = 0;  // graph_clock_ at the step's last sighting
    bool failed = false;    // could not be recorded: runs op by op
    std::unique_ptr<OpGraph> graph;
  };
  // By (tokens, logit rows, sequences, table width, hidden states, cache id).
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, int64_t>, RecordedStep> graphs_;
  bool backend_records_graphs_ = false;  // Backend::RecordsOpGraphs
  StepGraphStats graph_stats_;
  int64_t graph_clock_ = 0;  // counts step sightings, for evicting the least recently used
  std::vector<std::vector<int64_t>> expert_tokens_;  // see expert_tokens()
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_MODEL_H_
