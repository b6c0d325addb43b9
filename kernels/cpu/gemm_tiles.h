// The fixed output tile of the CPU backend's GEMMs (gemm.cc) and of its packed weights
// (cpu_packed_weights.cc), which are packed tile by tile so that packed GEMMs cut their work
// exactly like plain ones.
#ifndef MOE_KERNELS_CPU_GEMM_TILES_H_
#define MOE_KERNELS_CPU_GEMM_TILES_H_

#include <cstdint>

namespace moe {

// Tile shape, fixed so that results do not depend on the thread count. On a 2-core
// AVX-512-BF16 EPYC (DISABLED_Benchmark in gemm_test.cc) 256x512 tiles run the large bf16 GEMM
// at oneDNN's own multi-threaded speed and the small-m GEMMs faster than it; 256 to 2048
// columns measured alike within the (large) noise of that shared machine.
//
// Batch invariance, plain B: within a tile oneDNN's gemm:jit gives a row the same bits for any
// tile height of 2 or more (bf16; f32 with B not transposed). A tile of one row (m = 1, or
// m = 1 mod kGemmTileM) takes its gemv path and may differ in the last bit; so do f32 GEMMs
// with a transposed B and m <= 8.
// Packed B: oneDNN's brgemm gives a row the same bits for every tile height, 1 included
// (gemm_test checks every height from 1 to kGemmTileM).
inline constexpr int64_t kGemmTileM = 256;
inline constexpr int64_t kGemmTileN = 512;

}  // namespace moe

#endif  // MOE_KERNELS_CPU_GEMM_TILES_H_
