#include "engine/layers/attention/attention_inputs.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

absl::Status CheckAttentionInputs(const AttentionInputSpec& spec, const Tensor& x,
                                  const GqaAttentionBatch& batch, const KvCacheView& cache,
                                  const Tensor& out) {
  const auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(spec.layer, ": ", what));
  };
  const Device device = spec.device;
  const auto check = [&](absl::string_view name, const Tensor& t, DType dtype, const Shape& want,
                         const std::string& want_text) -> absl::Status {
    if (t.shape() != want) {
      return invalid(
          absl::StrCat(name, " has shape ", t.shape().ToString(), ", expected ", want_text));
    }
    if (t.dtype() != dtype) {
      return invalid(
          absl::StrCat(name, " has dtype ", DTypeName(t.dtype()), ", expected ", DTypeName(dtype)));
    }
    if (t.device() != device) {
      return invalid(absl::StrCat(name, " is on ", t.device().ToString(), ", expected ",
                                  device.ToString(), " (the backend's device)"));
    }
    if (t.data() == nullptr && t.numel() > 0) return invalid(absl::StrCat(name, " has no data"));
    return absl::OkStatus();
  };
  const int64_t d = spec.hidden;
  if (x.rank() != 2) {
    return invalid(absl::StrCat("x has shape ", x.shape().ToString(), ", expected [T, ", d, "]"));
  }
  const int64_t t = x.dim(0);
  const std::string rows = absl::StrCat(t, " (x's rows)");
  MOE_RETURN_IF_ERROR(check("x", x, spec.dtype, Shape{t, d}, absl::StrCat("[T, ", d, "]")));
  MOE_RETURN_IF_ERROR(
      check("out", out, spec.dtype, Shape{t, d}, absl::StrCat("[", t, ", ", d, "]")));
  if (out.Overlaps(x)) return invalid("out overlaps x");
  MOE_RETURN_IF_ERROR(
      check("positions", batch.positions, DType::kI32, Shape{t}, absl::StrCat("[", rows, "]")));
  MOE_RETURN_IF_ERROR(
      check("seq_ids", batch.seq_ids, DType::kI32, Shape{t}, absl::StrCat("[", rows, "]")));
  MOE_RETURN_IF_ERROR(check("slot_mapping", batch.slot_mapping, DType::kI32, Shape{t},
                            absl::StrCat("[", rows, "]")));
  const Tensor& bt = batch.block_tables;
  if (bt.rank() != 2) {
    return invalid(absl::StrCat("block_tables has shape ", bt.shape().ToString(),
                                ", expected [num_seqs, max_blocks_per_seq]"));
  }
  MOE_RETURN_IF_ERROR(check("block_tables", bt, DType::kI32, bt.shape(), ""));
  const Tensor& k = cache.k;
  const int64_t kv = spec.cache_heads, hd = spec.cache_head_dim;
  const std::string cache_text = absl::StrCat("[num_blocks, block_size, ", kv, ", ", hd, "]");
  if (k.rank() != 4 || k.dim(2) != kv || k.dim(3) != hd) {
    return invalid(
        absl::StrCat("cache.k has shape ", k.shape().ToString(), ", expected ", cache_text));
  }
  MOE_RETURN_IF_ERROR(check("cache.k", k, spec.dtype, k.shape(), cache_text));
  MOE_RETURN_IF_ERROR(check("cache.v", cache.v, spec.dtype, k.shape(),
                            k.shape().ToString() + " (cache.k's shape)"));
  if (k.Overlaps(cache.v)) return invalid("cache.k overlaps cache.v");
  if (out.Overlaps(k) || out.Overlaps(cache.v)) return invalid("out overlaps the KV cache");
  return absl::OkStatus();
}

absl::Status WriteKvAndAttend(Backend* backend, const CachedAttention& a,
                              const GqaAttentionBatch& batch, const KvCacheView& cache) {
  const int64_t t = batch.positions.dim(0);
  const int64_t num_blocks = cache.k.dim(0), block_size = cache.k.dim(1);
  KvWriteArgs write;
  write.tokens = t;
  write.kv_heads = a.kv_heads;
  write.head_dim = a.head_dim;
  write.dtype = a.dtype;
  write.k = a.k;
  write.k_ld = a.k_ld;
  write.v = a.v;
  write.v_ld = a.v_ld;
  write.slot_mapping = static_cast<const int32_t*>(batch.slot_mapping.data());
  write.num_blocks = num_blocks;
  write.block_size = block_size;
  write.k_cache = cache.k.data();
  write.v_cache = cache.v.data();
  MOE_RETURN_IF_ERROR(backend->KvWrite(write));

  AttentionArgs att;
  att.tokens = t;
  att.heads = a.heads;
  att.kv_heads = a.kv_heads;
  att.head_dim = a.head_dim;
  att.dtype = a.dtype;
  att.q = a.q;
  att.q_ld = a.q_ld;
  att.k_cache = cache.k.data();
  att.v_cache = cache.v.data();
  att.num_blocks = num_blocks;
  att.block_size = block_size;
  att.num_seqs = batch.block_tables.dim(0);
  att.max_blocks_per_seq = batch.block_tables.dim(1);
  att.block_tables = static_cast<const int32_t*>(batch.block_tables.data());
  att.seq_ids = static_cast<const int32_t*>(batch.seq_ids.data());
  att.positions = static_cast<const int32_t*>(batch.positions.data());
  att.sliding_window = a.sliding_window;
  att.scale = a.scale;
  att.out = a.out;
  att.out_ld = a.heads * a.head_dim;
  return backend->Attention(att);
}

}  // namespace moe
