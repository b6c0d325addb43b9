// Own tensor-core GEMM for many short row segments, each against its own bf16 weight matrix,
// in one launch: the MoE experts at small token counts (decode, small prefill), where a
// cuBLASLt call per expert is bound by launches and by tiles too few to fill the GPU, and the
// time should be the time to stream the weights once.
//
// For each segment s: C_s[rows_s, n] = A_s[rows_s, k] * B_{g(s)}^T, with B_g stored [n, k]
// row-major (K-major, as CudaPackedWeights and trans_b store it). A and B bf16, C bf16 or f32,
// fp32 accumulation, one rounding (round to nearest even, NaN kept, as FloatToBf16).
//
// How: a block computes a 64-row x 64-column tile (or 128 x 128 for long segments) of one
// segment with mma.sync m16n8k16 from shared memory fed by a 4-stage cp.async pipeline over k
// in steps of 64; a segment of more rows than a tile is several row tiles, so weights are read
// from memory once per tile of rows (the repeats mostly hit L2). Blocks of one segment's row tile are adjacent in the grid, so their
// A rows stay in L2. Row tiles past a segment's end do no math.
//
// Determinism: every output element is one thread's fp32 sum over k in ascending steps of 16
// (the order inside an mma is fixed by the hardware), whatever the number of segments or
// their sizes, so a segment's bits do not depend on the other segments in the launch, and a
// plain GEMM of the same rows gives the same bits through this kernel.
//
// Requirements (SegmentGemmSupports): k and n even multiples as below; pointers, leading dims
// and strides such that every 16-byte load of A and B and every store of two C values is
// aligned. Callers fall back to cuBLASLt otherwise.
#ifndef MOE_KERNELS_CUDA_SEGMENT_GEMM_H_
#define MOE_KERNELS_CUDA_SEGMENT_GEMM_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moe::cuda {

// Split k, for GEMMs with too few column tiles to fill the GPU (an attention output projection
// or a router gate at decode; the rule is in SegmentGemmSplits, segment_gemm.cu):
// SegmentGemmSplits(n, k) blocks per output tile each sum a range
// of k tiles into fp32 partials; the block that finishes last adds the partials in split
// order (split 0 first, fp32, no fma) and rounds once. The number of splits depends only on
// (n, k) and the order is fixed, so the bits are the same run to run, for any segments and
// rows in the launch, and a plain GEMM of the same rows gives the same bits; they differ from
// an unsplit sum by fp32 rounding. Which split finishes last is decided with an integer
// counter per output tile, never by float atomics. The partials and counters live in a
// workspace the caller keeps (counters zero before first use; each launch leaves them zero).
constexpr int kMaxSegmentGemmSplits = 16;
int SegmentGemmSplits(int64_t n, int64_t k);

struct SegmentGemmWorkspace {
  float* partials = nullptr;
  int64_t partial_floats = 0;
  int32_t* counters = nullptr;
  int64_t num_counters = 0;
};

// The block tiles of LaunchSegmentGemm: 64 x 64 (4 warps), or 128 x 128 (8 warps; B read once
// per 128 rows). They give the same bits. kAuto: 128 x 128 when some segment has 128 rows or
// more and the shape does not split k. The device-count launch always takes 64 x 64.
enum class SegmentGemmTiles { kAuto, kSmall, kLarge };

// What all segments of one launch share. Leading dims and strides are in elements.
struct SegmentGemmShape {
  int64_t n = 0;
  int64_t k = 0;
  const void* b = nullptr;  // bf16; matrix g at b + g * stride_b, row j at + j * ldb
  int64_t ldb = 0;
  int64_t stride_b = 0;
  const void* a = nullptr;  // bf16; segment rows at a + a_offset + r * lda
  int64_t lda = 0;
  void* c = nullptr;  // bf16 or f32; segment rows at c + c_offset + r * ldc
  int64_t ldc = 0;
  bool c_is_f32 = false;
  // Needed when SegmentGemmSplits(n, k) > 1: enough for one row tile (64 rows at ldc) of every
  // split and one row of column tiles (SegmentGemmSupports says false otherwise); launches over
  // more rows are cut to fit.
  SegmentGemmWorkspace workspace;
  SegmentGemmTiles tiles = SegmentGemmTiles::kAuto;
};

struct SegmentGemmSegment {
  int64_t group = 0;     // which B matrix
  int64_t a_offset = 0;  // elements from SegmentGemmShape::a to the first row
  int64_t c_offset = 0;  // elements from SegmentGemmShape::c to the first row
  int64_t rows = 0;
};

// Whether the kernel can run `shape` over `segments`: k % 8 == 0, n % 2 == 0; lda, ldb,
// stride_b and every a_offset multiples of 8 and A, B 16-byte aligned; ldc and every c_offset
// even and C aligned to two elements; for a split shape, a workspace as above.
bool SegmentGemmSupports(const SegmentGemmShape& shape,
                         absl::Span<const SegmentGemmSegment> segments);

// Enqueues the GEMM of every segment (empty ones are skipped) on `stream`. The caller has
// checked SegmentGemmSupports. A CUDA error's Status otherwise.
absl::Status LaunchSegmentGemm(const SegmentGemmShape& shape,
                               absl::Span<const SegmentGemmSegment> segments,
                               cudaStream_t stream);

// As LaunchSegmentGemm, with the segments given by their sizes in device memory (`counts`,
// num_groups entries, e.g. Bincount's output): segment g is the next counts[g] rows of A and C
// (a_offset = row * lda, c_offset = row * ldc) against B matrix g, so no host copy of the counts
// is needed and the launch can be captured in a CUDA graph. `rows` = A's rows, the sum of the
// counts; segments are clipped to it (and negative counts read as 0), so no count can make the
// kernel touch memory past A or C. Needs SegmentGemmSupports(shape, {}) and num_groups <=
// kMaxCountGroups.
// For a split shape the workspace must hold all `rows` rows at ldc and every possible tile
// (SegmentGemmCountsFits); the host path (LaunchSegmentGemm) has no such limit.
constexpr int64_t kMaxCountGroups = 1 << 16;
bool SegmentGemmCountsFits(const SegmentGemmShape& shape, int64_t rows, int64_t num_groups);
absl::Status LaunchSegmentGemmCounts(const SegmentGemmShape& shape, const int64_t* counts,
                                     int64_t num_groups, int64_t rows, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_SEGMENT_GEMM_H_
