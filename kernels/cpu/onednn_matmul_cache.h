// PLACEHOLDER being written by a helper.
#ifndef MOE_KERNELS_CPU_ONEDNN_MATMUL_CACHE_H_
#define MOE_KERNELS_CPU_ONEDNN_MATMUL_CACHE_H_
namespace moe {
class OneDnnMatmulCache {};
}  // namespace moe
#endif
