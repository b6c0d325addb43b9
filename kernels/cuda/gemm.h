// GEMM, strided batched GEMM and grouped GEMM on a CUDA device through cuBLASLt, with the
// semantics of GemmArgs / BatchedGemmArgs / GroupedGemmArgs in kernels/backend.h: row-major
// operands with leading dims, fp32 accumulation, one rounding to c_dtype.
//
// Row-major through a column-major library: a row-major C[m, n] (ldc) is the column-major
// C^T[n, m] with the same ld, so C = op(A) op(B) is run as C^T = op(B)^T op(A)^T: cuBLASLt's
// first operand is the weights B (N when B is [k, n], T when it is [n, k] or packed), its
// second is A (N, or T for trans_a), nothing is copied.
//
// Types: A and B f32 or bf16, C f32 or bf16, always CUBLAS_COMPUTE_32F with fp32 scale. f32
// inputs use CUBLAS_COMPUTE_32F, never the _FAST_TF32 variants, so f32 GEMMs stay
// fp32-accurate. f32 x f32 -> bf16 has no cuBLASLt kernel: it is computed into an fp32
// scratch buffer and rounded once (round to nearest even, as FloatToBf16); that scratch grows
// on demand (a stream synchronize and cudaMalloc the first time a larger one is needed), so
// this path is for tests and tools, not the hot path (the engine runs bf16 -> bf16 / f32).
//
// Alignment: cuBLASLt's fast kernels want 16-byte aligned pointers and leading dims. The
// alignment each call actually has (the largest power of two up to 16 bytes dividing the base
// pointer, the leading dim and the batch stride, in bytes) is given to the heuristic as
// CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*, so odd n, k and leading dims run on slower kernels
// rather than failing. Should cuBLASLt have no kernel at all for a combination, the call is
// InvalidArgument naming the shape and the alignments.
//
// Determinism: one algorithm per shape, chosen by cublasLtMatmulAlgoGetHeuristic (a pure
// function of the shape, types, alignments, workspace size, GPU and library version) and
// cached, so a shape always runs the same kernel with the same split; the heuristic is asked
// only for reduction schemes NONE and COMPUTE_TYPE (split-K partials summed in fp32 by a
// separate kernel in a fixed order), never INPLACE or OUTPUT_TYPE, which sum partials in the
// output type (extra bf16 roundings). cuBLASLt then gives the same bits run to run on the same
// GPU model and library version (cuBLAS's reproducibility guarantee; it does not hold across
// versions or GPU models, and a backend keeps one workspace size so the choice never moves).
// The algorithm is chosen for the per-matrix shape (batch count 1) and reused for the batched
// call (checked with cublasLtMatmulAlgoCheck; if it does not fit, the batch runs matrix by
// matrix; measured on H100 with cuBLASLt 13.1 this happens where the per-matrix pick is
// split-K, e.g. Mixtral w2 and DeepSeek-V3 w13 at <= 16 rows per expert, see DescribePlan):
// a batched GEMM, the same GEMM one matrix at a time and a grouped GEMM's equal-row
// segments give the same bits, as backend.h promises, when their operands have the same
// alignment class (always so with 16-byte aligned pointers, strides and leading dims).
//
// Short GEMMs: a bf16 GEMM against K-major weights (packed, or trans_b) with at most
// segment_max_rows rows per matrix runs on the own segment kernel (segment_gemm.h), which
// streams the weights once at tensor-core speed, instead of cuBLASLt, whose small-m kernels
// take a launch (and often a split-K pass) per matrix. The rule depends only on the matrix's
// own rows and alignment, so a plain, a batched and a grouped GEMM of the same rows still give
// the same bits. Shapes the segment kernel splits over k (segment_gemm.h) use this runner's
// split workspace (64 MiB of fp32 partials and per-tile counters, made on first need).
//
// Grouped GEMM: the short segments go to one launch of the segment kernel; each longer one is a
// cuBLASLt matmul, in order, on the caller's stream (a launch and a heuristic query the first
// time each segment height is seen). With device counts (GroupedGemmArgs::counts) every segment
// goes to the segment kernel, which finds its tiles from the counts on the device (no host
// copy, capturable in a graph); where the kernel cannot run (alignment, dtypes), the counts
// are copied to the host (a synchronisation) and the host path runs.
//
// Thread safety: one CublasLtGemm per backend, used by one thread at a time; calls must be
// issued on one stream (or streams ordered with respect to each other), because they share
// the workspace. Packed B handles are CudaPackedWeights (cuda_packed_weights.h).
#ifndef MOE_KERNELS_CUDA_GEMM_H_
#define MOE_KERNELS_CUDA_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"
#include "kernels/cuda/segment_gemm.h"

namespace moe::cuda {

// OK for CUBLAS_STATUS_SUCCESS; otherwise a Status naming `call`, `what` (the op and shape),
// the status's name and text and file:line. Codes: ALLOC_FAILED ResourceExhausted,
// INVALID_VALUE InvalidArgument, NOT_SUPPORTED / ARCH_MISMATCH Unimplemented, NOT_INITIALIZED
// Unavailable, else Internal.
absl::Status CublasLtStatus(cublasStatus_t status, const char* call, absl::string_view what,
                            const char* file, int line);

// What one cached plan is specialised for (user-level, row-major terms). Exposed for tests.
struct GemmPlanKey {
  DType ab_dtype = DType::kF32;
  DType c_dtype = DType::kF32;  // what cuBLASLt writes (f32 on the f32 -> bf16 path)
  bool trans_a = false;
  bool b_is_nk = false;  // B stored [n, k]: trans_b, or a packed B
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  int64_t lda = 0;
  int64_t ldb = 0;
  int64_t ldc = 0;
  int64_t batch = 1;
  int64_t stride_a = 0;
  int64_t stride_b = 0;
  int64_t stride_c = 0;
  int32_t align_a = 16;  // bytes
  int32_t align_b = 16;
  int32_t align_c = 16;
  // GemmArgs::row_invariant: the algorithm is the one chosen for kRowInvariantPlanRows rows.
  bool row_invariant = false;

  bool operator==(const GemmPlanKey& o) const;
  std::string ToString() const;
};

struct GemmPlanKeyHash {
  size_t operator()(const GemmPlanKey& key) const;
};

class CublasLtGemm {
 public:
  // 32 MiB: what NVIDIA recommends for Hopper, enough for the split-K partials the heuristic
  // picks for small m.
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;
  // Plans kept; the least recently used is dropped beyond this. Grouped GEMMs make one plan per
  // distinct segment height, so this bounds memory for any token count. A dropped plan is
  // rebuilt identically (the heuristic is deterministic), so eviction never changes bits.
  static constexpr size_t kDefaultMaxPlans = 2048;
  // GEMMs of at most this many rows per matrix (per segment) with bf16 A and K-major bf16 B
  // run on the own segment kernel (segment_gemm.h) instead of cuBLASLt. The environment
  // variable MOE_CUDA_SEGMENT_GEMM_MAX_ROWS overrides it when the backend is created (0 = never;
  // for benchmarks comparing the two).
  static constexpr int64_t kDefaultSegmentMaxRows = 64;
  // Small weight matrices (n * k up to kSmallMatrixElements: Qwen3-30B-A3B's experts) take the
  // segment kernel up to kSmallMatrixSegmentRows rows (its 128 x 128 tiles from 128 rows):
  // measured on H100, Qwen3's block at T=2048 went 2.47 -> 1.22 ms (random) and 0.78 -> 1.00 ms
  // (balanced) against one cuBLASLt call per segment; at T=8192 (~512-row segments) a limit of
  // 1024 made it slower (3.0 -> 3.8 ms random, 2.0 -> 3.5 ms balanced), and large matrices
  // (Mixtral, DeepSeek-V3) lost with longer segments. Not with segment_max_rows = 0.
  static constexpr int64_t kSmallMatrixElements = int64_t{4} << 20;
  static constexpr int64_t kSmallMatrixSegmentRows = 256;
  // Row-invariant GEMMs (GemmArgs::row_invariant) take the segment kernel at every m where it
  // takes the shape; otherwise (f32) cuBLASLt with the algorithm its heuristic picks for this
  // many rows, for every m, in chunks of at most this many rows (the algorithm need not run
  // at a larger m: measured, the one for n=8, k=4096 does not at m=8192).
  static constexpr int64_t kRowInvariantPlanRows = 1024;

  // Creates the cuBLASLt handle and the workspace on the current device. Unavailable without
  // a usable device; ResourceExhausted if the workspace cannot be allocated.
  // segment_max_rows < 0: kDefaultSegmentMaxRows or the environment's value.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      size_t workspace_bytes = kDefaultWorkspaceBytes, size_t max_plans = kDefaultMaxPlans,
      int64_t segment_max_rows = -1);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // The ops of kernels/backend.h, with arguments already validated by Backend (and calls with
  // no output elements already filtered out); pointers are device memory; a packed_b must be a
  // CudaPackedWeights. Enqueued on `stream`. InvalidArgument if cuBLASLt has no kernel for the
  // alignments; a cuBLASLt or CUDA error's Status naming the call and the shape otherwise.
  absl::Status Gemm(const GemmArgs& args, cudaStream_t stream);
  absl::Status BatchedGemm(const BatchedGemmArgs& args, cudaStream_t stream);
  absl::Status GroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream);

  // The pinned choice for `key` (made if missing), for logs and benchmarks, e.g.
  // "algo 66 tile 14 stages 23 split_k 1 reduction 0 cluster 2, one call" or
  // "..., matrix by matrix" for a batch that runs one matrix at a time. Errors as Gemm.
  absl::StatusOr<std::string> DescribePlan(const GemmPlanKey& key);

  size_t workspace_bytes() const { return workspace_bytes_; }
  size_t cached_plans() const { return plans_.size(); }

 private:
  struct Plan;
  struct Entry;

  CublasLtGemm() = default;

  // One GEMM or one strided batch of them. `b` is a plain B (ldb, trans_b) or a packed
  // matrix (b_is_nk, ldb = the packed ld); m rows of A from `a`; C at `c`.
  absl::Status Run(absl::string_view op, const GemmArgs& g, int64_t m, const void* a, const void* b,
                   int64_t ldb, bool b_is_nk, void* c, int64_t batch, int64_t stride_a,
                   int64_t stride_b, int64_t stride_c, cudaStream_t stream);
  // cuBLASLt on the plan for `key` (C of key.c_dtype at c with key.ldc).
  absl::Status Matmul(absl::string_view op, const GemmPlanKey& key, const void* a, const void* b,
                      void* c, cudaStream_t stream);
  // The cached plan for `key`, made (and the least recently used one dropped) if missing.
  absl::StatusOr<const Plan*> GetPlan(absl::string_view op, const GemmPlanKey& key);
  absl::StatusOr<std::unique_ptr<Plan>> MakePlan(absl::string_view op, const GemmPlanKey& key);
  // An fp32 buffer of at least `bytes` for the f32 -> bf16 path.
  absl::StatusOr<float*> Scratch(size_t bytes, cudaStream_t stream);
  // SegmentShapeFor (gemm.cc) with the split-k workspace made and attached where the shape
  // splits (segment_gemm.h); false when the segment kernel does not take these dtypes/layouts.
  absl::StatusOr<bool> SegmentShape(const GemmArgs& g, const void* b, int64_t ldb, bool b_is_nk,
                                    int64_t stride_b, cudaStream_t stream, SegmentGemmShape* shape);
  absl::Status EnsureSplitWorkspace(cudaStream_t stream);
  // Most rows per matrix that run on the segment kernel for g's n x k B (see above; no limit
  // for a row-invariant GEMM).
  int64_t SegmentRowsLimit(const GemmArgs& g) const;

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  // The segment kernel's split-k partials (64 MiB: all rows of a 64-token decode step's expert
  // GEMMs at every shape measured) and per-tile counters, made on first need.
  static constexpr int64_t kSplitPartialFloats = int64_t{16} << 20;
  static constexpr int64_t kSplitCounters = int64_t{1} << 20;
  SegmentGemmWorkspace split_;
  size_t max_plans_ = kDefaultMaxPlans;
  int64_t segment_max_rows_ = kDefaultSegmentMaxRows;
  // Reused host buffers: GroupedGemm's short segments, Run's batch matrices as segments, and
  // the offsets of device counts that the segment kernel cannot take.
  std::vector<SegmentGemmSegment> short_segments_;
  std::vector<SegmentGemmSegment> batch_segments_;
  std::vector<int64_t> offsets_host_;
  std::list<GemmPlanKey> lru_;  // most recently used first
  std::unordered_map<GemmPlanKey, std::unique_ptr<Entry>, GemmPlanKeyHash> plans_;
};

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_GEMM_H_
