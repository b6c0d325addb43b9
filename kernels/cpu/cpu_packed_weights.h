// The CPU backend's PackedWeights: every matrix cut into the GEMMs' output-column tiles
// (kGemmTileN wide, the last one narrower), each tile [k, width] reordered once into the
// weights layout that oneDNN's brgemm matmul reads (MatmulPrimitive::weights_md of a packed_b
// key). A packed GEMM then runs, per tile, a primitive for that tile's rows and width that
// reads the tile as it is, instead of gemm:jit copying B into its own blocks on every call.
#ifndef MOE_KERNELS_CPU_CPU_PACKED_WEIGHTS_H_
#define MOE_KERNELS_CPU_CPU_PACKED_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm_tiles.h"
#include "kernels/cpu/onednn_matmul_cache.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace moe {

class CpuPackedWeights final : public PackedWeights {
 public:
  // Sizes the tiles from oneDNN's packed layouts and allocates them (nothing packed yet).
  // An empty set (batch, k or n = 0) holds no memory.
  static absl::StatusOr<std::unique_ptr<CpuPackedWeights>> Create(const Backend* backend,
                                                                  const PackWeightsArgs& args,
                                                                  OneDnnMatmulCache* cache);
  ~CpuPackedWeights() override;

  // Packs matrix `index` from `src` ([k, n], or [n, k] when trans_b(), leading dim ldb), with
  // oneDNN reorders on up to `num_threads` threads; a trans_b bf16 source bound for oneDNN's
  // AVX-512 bf16 layout (BA16a64b2a) is copied into it directly instead, to the same bytes.
  absl::Status Pack(int64_t index, const void* src, int64_t ldb, OneDnnMatmulCache* cache,
                    int num_threads);
  // The inverse: writes matrix `index` to `dst` in the layout Pack reads, exactly.
  absl::Status Unpack(int64_t index, void* dst, int64_t ldb, OneDnnMatmulCache* cache,
                      int num_threads) const;

  // The packed tile of matrix `index` that holds output columns [tile * kGemmTileN, ...).
  const void* tile(int64_t index, int64_t tile) const {
    return static_cast<const char*>(data_) + index * matrix_bytes_ + tile * tile_bytes_[0];
  }
  // The layout of a tile `width` columns wide (kGemmTileN, or the last tile's width).
  const dnnl::memory::desc& tile_md(int64_t width) const {
    return md_[width == kGemmTileN ? 0 : 1];
  }

  size_t bytes() const override { return static_cast<size_t>(batch()) * matrix_bytes_; }

 private:
  using PackedWeights::PackedWeights;

  // Reorders every tile of matrix `index` between the plain matrix at `plain` (leading dim
  // ldb) and its packed tiles, in the direction `to_packed` says.
  absl::Status Reorder(int64_t index, void* plain, int64_t ldb, bool to_packed,
                       OneDnnMatmulCache* cache, int num_threads) const;

  void* data_ = nullptr;
  size_t matrix_bytes_ = 0;
  // [0]: full tiles, kGemmTileN columns; [1]: the narrower last tile, if any.
  int64_t full_tiles_ = 0;
  int64_t tail_n_ = 0;
  size_t tile_bytes_[2] = {0, 0};
  dnnl::memory::desc md_[2];
};

}  // namespace moe

#endif  // MOE_KERNELS_CPU_CPU_PACKED_WEIGHTS_H_
