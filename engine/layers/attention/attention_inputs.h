// What the attention layers (GqaAttention, MlaAttention) take besides their weights: the
// step's token positions and cache slots, and one layer's paged KV cache; and the check of a
// Forward's inputs that both layers run.
#ifndef MOE_ENGINE_LAYERS_ATTENTION_ATTENTION_INPUTS_H_
#define MOE_ENGINE_LAYERS_ATTENTION_ATTENTION_INPUTS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/core/tensor.h"
#include "kernels/backend.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace moe {

// The tokens of one Forward and where their K / V go. Device tensors, int32 unless stated.
// See AttentionArgs and KvWriteArgs in kernels/backend.h for the exact meaning.
struct GqaAttentionBatch {
  Tensor positions;     // [T] absolute position of each token in its sequence
  Tensor seq_ids;       // [T] row of block_tables
  Tensor slot_mapping;  // [T] cache slot (block * block_size + offset) of each token's K / V
  Tensor block_tables;  // [num_seqs, max_blocks_per_seq]
};

// One layer's paged KV cache, owned by the caller: [num_blocks, block_size, KV, hd] each, in
// config.dtype on the backend's device. Forward writes the batch's slots and reads the rest.
struct KvCacheView {
  Tensor k;
  Tensor v;
};

// What a layer expects of its Forward's inputs.
struct AttentionInputSpec {
  absl::string_view layer;  // message prefix: "attention", "mla_attention"
  int64_t hidden = 0;       // D of x and out
  int64_t cache_heads = 0;
  int64_t cache_head_dim = 0;
  DType dtype = DType::kF32;  // of x, out and the cache
  Device device;              // the backend's
};

// Checks x [T, D], out [T, D] (not overlapping x or the cache), positions / seq_ids /
// slot_mapping [T] and block_tables [num_seqs, max_blocks] (int32), and the cache's two
// [num_blocks, block_size, cache_heads, cache_head_dim] arrays (same shape, disjoint), all on
// spec.device. InvalidArgument "<layer>: <tensor> has shape ..., expected ..." and the like.
absl::Status CheckAttentionInputs(const AttentionInputSpec& spec, const Tensor& x,
                                  const GqaAttentionBatch& batch, const KvCacheView& cache,
                                  const Tensor& out);

// One step's attention over the cache: the new tokens' K / V rows are written to their slots
// (Backend::KvWrite), then every query attends to its sequence's cached positions
// (Backend::Attention). q, k, v: [T, heads * head_dim] / [T, kv_heads * head_dim] rows with
// leading dims; out: [T, heads * head_dim], contiguous.
struct CachedAttention {
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::kF32;
  const void* q = nullptr;
  int64_t q_ld = 0;
  const void* k = nullptr;
  int64_t k_ld = 0;
  const void* v = nullptr;
  int64_t v_ld = 0;
  int64_t sliding_window = 0;
  float scale = 1.0f;
  void* out = nullptr;
};
absl::Status WriteKvAndAttend(Backend* backend, const CachedAttention& a,
                              const GqaAttentionBatch& batch, const KvCacheView& cache);

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_ATTENTION_ATTENTION_INPUTS_H_
