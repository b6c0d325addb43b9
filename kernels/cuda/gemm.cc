#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_packed_weights.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm_kernels.h"
#include "kernels/cuda/segment_gemm.h"
#include "kernels/status_macros.h"

// Returns the Status of a failed cuBLASLt call from the enclosing function, naming the call
// and `what` (the op and its shape).
#define MOE_CUBLASLT_RETURN_IF_ERROR(expr, what)                                             \
  do {                                                                                       \
    const cublasStatus_t moe_lt_status_ = (expr);                                            \
    if (moe_lt_status_ != CUBLAS_STATUS_SUCCESS) {                                           \
      return ::moe::cuda::CublasLtStatus(moe_lt_status_, #expr, (what), __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)

namespace moe::cuda {
namespace {

// How many candidates the heuristic returns; the first that qualifies is pinned.
constexpr int kHeuristicResults = 8;
constexpr int32_t kMaxAlignment = 16;

cudaDataType_t CudaType(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

// The largest power of two, up to 16, dividing the address and the byte distances between
// rows and matrices: the alignment every row start of every matrix has.
int32_t AlignmentOf(const void* p, int64_t ld_bytes, int64_t stride_bytes) {
  const uint64_t bits = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) |
                        static_cast<uint64_t>(ld_bytes) | static_cast<uint64_t>(stride_bytes) |
                        static_cast<uint64_t>(kMaxAlignment);
  return static_cast<int32_t>(bits & (~bits + 1));
}

const void* Offset(const void* p, int64_t elements, DType t) {
  return static_cast<const char*>(p) + elements * DTypeSize(t);
}
void* Offset(void* p, int64_t elements, DType t) {
  return static_cast<char*>(p) + elements * DTypeSize(t);
}

// The segment kernel's view of a GEMM against B (ldb, [n, k] when b_is_nk), or false when it
// does not apply: it reads bf16 A row-major and K-major bf16 B, and writes bf16 or f32.
bool SegmentShapeFor(const GemmArgs& g, const void* b, int64_t ldb, bool b_is_nk, int64_t stride_b,
                     SegmentGemmShape* shape) {
  if (g.a_dtype != DType::kBF16 || g.b_dtype != DType::kBF16 || g.trans_a || !b_is_nk) {
    return false;
  }
  if (g.c_dtype != DType::kBF16 && g.c_dtype != DType::kF32) return false;
  shape->n = g.n;
  shape->k = g.k;
  shape->b = b;
  shape->ldb = ldb;
  shape->stride_b = stride_b;
  shape->a = g.a;
  shape->lda = g.lda;
  shape->c = g.c;
  shape->ldc = g.ldc;
  shape->c_is_f32 = g.c_dtype == DType::kF32;
  return true;
}

// The per-matrix key of a batched key: what the algorithm is chosen for.
GemmPlanKey Single(GemmPlanKey key) {
  key.batch = 1;
  key.stride_a = key.stride_b = key.stride_c = 0;
  return key;
}

std::string What(absl::string_view op, const GemmPlanKey& key) {
  return absl::StrCat(op, " (cuda) ", key.ToString());
}

// FailedPrecondition naming `what` when `stream` is being captured into a graph (which a
// synchronisation or a copy to the host would invalidate), else OK.
absl::Status RefuseWhileCapturing(cudaStream_t stream, absl::string_view what) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("cublaslt gemm: ", what, " waits for the device, which a stream being "
                   "captured into a graph cannot"));
}

absl::StatusCode CodeFor(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::StatusCode::kResourceExhausted;
    case CUBLAS_STATUS_INVALID_VALUE:
      return absl::StatusCode::kInvalidArgument;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return absl::StatusCode::kUnimplemented;
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

// Destroys a matmul preference at scope exit.
class Preference {
 public:
  Preference() = default;
  ~Preference() {
    if (pref_ != nullptr) cublasLtMatmulPreferenceDestroy(pref_);
  }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  cublasLtMatmulPreference_t* out() { return &pref_; }
  cublasLtMatmulPreference_t get() const { return pref_; }

 private:
  cublasLtMatmulPreference_t pref_ = nullptr;
};

template <typename T>
cublasStatus_t SetPref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                       T value) {
  return cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
}

template <typename T>
cublasStatus_t SetDesc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, T value) {
  return cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value));
}

// A column-major rows x cols layout with leading dim ld, `batch` matrices `stride` apart.
absl::Status MakeLayout(cublasLtMatrixLayout_t* layout, DType t, int64_t rows, int64_t cols,
                        int64_t ld, int64_t batch, int64_t stride, const std::string& what) {
  MOE_CUBLASLT_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(layout, CudaType(t), static_cast<uint64_t>(rows),
                                 static_cast<uint64_t>(cols), ld),
      what);
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    MOE_CUBLASLT_RETURN_IF_ERROR(
        cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                         sizeof(count)),
        what);
    MOE_CUBLASLT_RETURN_IF_ERROR(
        cublasLtMatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                         &stride, sizeof(stride)),
        what);
  }
  return absl::OkStatus();
}

// Split-K partials summed by a separate kernel in fp32, or no split: one rounding to C.
bool SingleRounding(const cublasLtMatmulAlgo_t& algo) {
  uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                           sizeof(scheme), &written) != CUBLAS_STATUS_SUCCESS) {
    return false;
  }
  return scheme == CUBLASLT_REDUCTION_SCHEME_NONE ||
         scheme == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
}

}  // namespace

absl::Status CublasLtStatus(cublasStatus_t status, const char* call, absl::string_view what,
                            const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::Status(
      CodeFor(status),
      absl::StrCat(call, " failed for ", what, ": ", cublasLtGetStatusName(status), " (",
                   cublasLtGetStatusString(status), ") at ", file, ":", line));
}

bool GemmPlanKey::operator==(const GemmPlanKey& o) const {
  return ab_dtype == o.ab_dtype && c_dtype == o.c_dtype && trans_a == o.trans_a &&
         b_is_nk == o.b_is_nk && m == o.m && n == o.n && k == o.k && lda == o.lda && ldb == o.ldb &&
         ldc == o.ldc && batch == o.batch && stride_a == o.stride_a && stride_b == o.stride_b &&
         stride_c == o.stride_c && align_a == o.align_a && align_b == o.align_b &&
         align_c == o.align_c && row_invariant == o.row_invariant;
}

std::string GemmPlanKey::ToString() const {
  return absl::StrCat("m=", m, " n=", n, " k=", k, " batch=", batch, " (", DTypeName(ab_dtype),
                      " x ", DTypeName(ab_dtype), " -> ", DTypeName(c_dtype), ", trans_a=", trans_a,
                      ", b stored ", b_is_nk ? "[n, k]" : "[k, n]", ", lda=", lda, ", ldb=", ldb,
                      ", ldc=", ldc, ", strides a/b/c=", stride_a, "/", stride_b, "/", stride_c,
                      ", alignment a/b/c=", align_a, "/", align_b, "/", align_c, " bytes",
                      row_invariant ? ", row-invariant" : "", ")");
}

size_t GemmPlanKeyHash::operator()(const GemmPlanKey& key) const {
  size_t h = 0;
  auto mix = [&h](uint64_t v) {
    h ^= std::hash<uint64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  };
  mix(static_cast<uint64_t>(key.ab_dtype) | static_cast<uint64_t>(key.c_dtype) << 8 |
      static_cast<uint64_t>(key.trans_a) << 16 | static_cast<uint64_t>(key.b_is_nk) << 17 |
      static_cast<uint64_t>(key.align_a) << 24 | static_cast<uint64_t>(key.align_b) << 32 |
      static_cast<uint64_t>(key.align_c) << 40 | static_cast<uint64_t>(key.row_invariant) << 48);
  for (int64_t v : {key.m, key.n, key.k, key.lda, key.ldb, key.ldc, key.batch, key.stride_a,
                    key.stride_b, key.stride_c}) {
    mix(static_cast<uint64_t>(v));
  }
  return h;
}

struct CublasLtGemm::Plan {
  ~Plan() {
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
    for (cublasLtMatrixLayout_t l : {a_layout, b_layout, c_layout}) {
      if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
    }
  }
  cublasLtMatmulDesc_t desc = nullptr;
  // cuBLASLt's operands: its A is our B (the weights), its B is our A.
  cublasLtMatrixLayout_t a_layout = nullptr;
  cublasLtMatrixLayout_t b_layout = nullptr;
  cublasLtMatrixLayout_t c_layout = nullptr;
  cublasLtMatmulAlgo_t algo = {};
  // Batched only: the per-matrix algorithm does not run batched; loop over the matrices.
  bool matrix_by_matrix = false;
};

struct CublasLtGemm::Entry {
  std::unique_ptr<Plan> plan;
  std::list<GemmPlanKey>::iterator lru;
};

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create(size_t workspace_bytes,
                                                                   size_t max_plans,
                                                                   int64_t segment_max_rows) {
  int devices = 0;
  MOE_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&devices));
  if (devices == 0) return absl::UnavailableError("cublaslt gemm: no CUDA device");
  std::unique_ptr<CublasLtGemm> g(new CublasLtGemm());
  g->max_plans_ = max_plans < 2 ? 2 : max_plans;
  if (segment_max_rows >= 0) {
    g->segment_max_rows_ = segment_max_rows;
  } else if (const char* rows = std::getenv("MOE_CUDA_SEGMENT_GEMM_MAX_ROWS")) {
    g->segment_max_rows_ = std::atoll(rows);
  }
  MOE_CUBLASLT_RETURN_IF_ERROR(cublasLtCreate(&g->handle_), "cublaslt gemm setup");
  if (workspace_bytes > 0) {
    if (cudaMalloc(&g->workspace_, workspace_bytes) != cudaSuccess) {
      g->workspace_ = nullptr;
      cudaGetLastError();  // reported here, not by the next CUDA call
      return absl::ResourceExhaustedError(absl::StrCat(
          "cublaslt gemm: cannot allocate a workspace of ", workspace_bytes, " bytes"));
    }
    g->workspace_bytes_ = workspace_bytes;
  }
  return g;
}

CublasLtGemm::~CublasLtGemm() {
  plans_.clear();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (split_.partials != nullptr) cudaFree(split_.partials);
  if (split_.counters != nullptr) cudaFree(split_.counters);
}

absl::StatusOr<bool> CublasLtGemm::SegmentShape(const GemmArgs& g, const void* b, int64_t ldb,
                                                bool b_is_nk, int64_t stride_b, cudaStream_t stream,
                                                SegmentGemmShape* shape) {
  if (!SegmentShapeFor(g, b, ldb, b_is_nk, stride_b, shape)) return false;
  if (SegmentGemmSplits(g.n, g.k) > 1) {
    MOE_RETURN_IF_ERROR(EnsureSplitWorkspace(stream));
    shape->workspace = split_;
  }
  return true;
}

int64_t CublasLtGemm::SegmentRowsLimit(const GemmArgs& g) const {
  if (segment_max_rows_ == 0) return 0;
  if (g.row_invariant) return INT64_MAX;
  if (g.n * g.k > kSmallMatrixElements) return segment_max_rows_;
  return std::max(segment_max_rows_, kSmallMatrixSegmentRows);
}

absl::Status CublasLtGemm::EnsureSplitWorkspace(cudaStream_t stream) {
  if (split_.partials != nullptr) return absl::OkStatus();
  // Made once, the first time a split shape runs (a synchronisation; before any graph records
  // it, since a step is run op by op before it is recorded).
  MOE_RETURN_IF_ERROR(RefuseWhileCapturing(stream, "the split-k workspace's first use"));
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  void* partials = nullptr;
  void* counters = nullptr;
  const size_t partial_bytes = kSplitPartialFloats * sizeof(float);
  const size_t counter_bytes = kSplitCounters * sizeof(int32_t);
  if (cudaMalloc(&partials, partial_bytes) != cudaSuccess ||
      cudaMalloc(&counters, counter_bytes) != cudaSuccess ||
      cudaMemset(counters, 0, counter_bytes) != cudaSuccess) {
    cudaGetLastError();
    if (partials != nullptr) cudaFree(partials);
    if (counters != nullptr) cudaFree(counters);
    return absl::ResourceExhaustedError(
        absl::StrCat("cublaslt gemm: cannot allocate the split-k workspace (", partial_bytes, " + ",
                     counter_bytes, " bytes)"));
  }
  split_.partials = static_cast<float*>(partials);
  split_.partial_floats = kSplitPartialFloats;
  split_.counters = static_cast<int32_t*>(counters);
  split_.num_counters = kSplitCounters;
  return absl::OkStatus();
}

absl::Status CublasLtGemm::Gemm(const GemmArgs& args, cudaStream_t stream) {
  const auto* packed = static_cast<const CudaPackedWeights*>(args.packed_b);
  if (packed != nullptr) {
    return Run("gemm", args, args.m, args.a, packed->matrix(args.packed_b_index), packed->ld(),
               /*b_is_nk=*/true, args.c, 1, 0, 0, 0, stream);
  }
  return Run("gemm", args, args.m, args.a, args.b, args.ldb, args.trans_b, args.c, 1, 0, 0, 0,
             stream);
}

absl::Status CublasLtGemm::BatchedGemm(const BatchedGemmArgs& args, cudaStream_t stream) {
  const GemmArgs& g = args.gemm;
  const auto* packed = static_cast<const CudaPackedWeights*>(g.packed_b);
  if (packed != nullptr) {
    return Run("batched_gemm", g, g.m, g.a, packed->matrix(g.packed_b_index), packed->ld(),
               /*b_is_nk=*/true, g.c, args.batch, args.stride_a, packed->matrix_stride(),
               args.stride_c, stream);
  }
  return Run("batched_gemm", g, g.m, g.a, g.b, g.ldb, g.trans_b, g.c, args.batch, args.stride_a,
             args.stride_b, args.stride_c, stream);
}

absl::Status CublasLtGemm::GroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream) {
  const GemmArgs& g = args.gemm;
  const auto* packed = static_cast<const CudaPackedWeights*>(g.packed_b);
  const void* b = packed != nullptr ? packed->matrix(g.packed_b_index) : g.b;
  const int64_t ldb = packed != nullptr ? packed->ld() : g.ldb;
  const bool b_is_nk = packed != nullptr || g.trans_b;
  const int64_t stride_b = packed != nullptr ? packed->matrix_stride() : args.stride_b;
  // Short segments go to one launch of the segment kernel, the others to cuBLASLt one by one;
  // either way a segment is computed as the plain GEMM of its rows would be (see Run).
  SegmentGemmShape shape;
  MOE_ASSIGN_OR_RETURN(const bool segment_kernel,
                       SegmentShape(g, b, ldb, b_is_nk, stride_b, stream, &shape));
  if (args.counts != nullptr) {
    if (segment_kernel && args.num_groups <= kMaxCountGroups && SegmentGemmSupports(shape, {}) &&
        SegmentGemmCountsFits(shape, g.m, args.num_groups)) {
      return LaunchSegmentGemmCounts(shape, args.counts, args.num_groups, g.m, stream);
    }
    // No kernel reads these counts on the device: copy them here (offsets_host_[1..]) and
    // take the host path with their running sum, clipped to m as the kernel would. A stream
    // being captured into a graph cannot wait for them: refused before any call that would
    // invalidate the capture.
    MOE_RETURN_IF_ERROR(RefuseWhileCapturing(stream, "grouped_gemm with device counts"));
    offsets_host_.assign(args.num_groups + 1, 0);
    MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(offsets_host_.data() + 1, args.counts,
                                             args.num_groups * sizeof(int64_t),
                                             cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    for (int64_t i = 0; i < args.num_groups; ++i) {
      offsets_host_[i + 1] =
          std::min(g.m, offsets_host_[i] + std::max<int64_t>(offsets_host_[i + 1], 0));
    }
    GroupedGemmArgs with_offsets = args;
    with_offsets.counts = nullptr;
    with_offsets.offsets = offsets_host_.data();
    return GroupedGemm(with_offsets, stream);
  }
  // One segment as its plain GEMM (Run picks the segment kernel or cuBLASLt for its rows).
  auto plain = [&](const SegmentGemmSegment& seg) {
    return Run("grouped_gemm", g, seg.rows, Offset(g.a, seg.a_offset, g.a_dtype),
               Offset(b, seg.group * stride_b, g.b_dtype), ldb, b_is_nk,
               Offset(g.c, seg.c_offset, g.c_dtype), 1, 0, 0, 0, stream);
  };
  short_segments_.clear();
  for (int64_t i = 0; i < args.num_groups; ++i) {
    const int64_t first = args.offsets[i];
    const SegmentGemmSegment seg{i, first * g.lda, first * g.ldc, args.offsets[i + 1] - first};
    if (seg.rows == 0) continue;
    if (segment_kernel && seg.rows <= SegmentRowsLimit(g)) {
      short_segments_.push_back(seg);
    } else {
      MOE_RETURN_IF_ERROR(plain(seg));
    }
  }
  if (short_segments_.empty()) return absl::OkStatus();
  if (SegmentGemmSupports(shape, short_segments_)) {
    return LaunchSegmentGemm(shape, short_segments_, stream);
  }
  // Misaligned for one launch: segment by segment, as the plain GEMM of each would run.
  for (const SegmentGemmSegment& seg : short_segments_) MOE_RETURN_IF_ERROR(plain(seg));
  return absl::OkStatus();
}

absl::Status CublasLtGemm::Run(absl::string_view op, const GemmArgs& g, int64_t m, const void* a,
                               const void* b, int64_t ldb, bool b_is_nk, void* c, int64_t batch,
                               int64_t stride_a, int64_t stride_b, int64_t stride_c,
                               cudaStream_t stream) {
  const int64_t c_size = DTypeSize(g.c_dtype);
  if (g.k == 0) {
    // An empty sum: C = 0 (zero bits are 0.0 in f32 and bf16).
    for (int64_t i = 0; i < batch; ++i) {
      MOE_CUDA_RETURN_IF_ERROR(cudaMemset2DAsync(Offset(c, i * stride_c, g.c_dtype), g.ldc * c_size,
                                                 0, g.n * c_size, m, stream));
    }
    return absl::OkStatus();
  }
  if (batch == 1) stride_a = stride_b = stride_c = 0;
  if (m <= SegmentRowsLimit(g)) {
    SegmentGemmShape shape;
    MOE_ASSIGN_OR_RETURN(const bool segment_kernel,
                         SegmentShape(g, b, ldb, b_is_nk, stride_b, stream, &shape));
    if (segment_kernel) {
      shape.a = a;
      shape.c = c;
      batch_segments_.clear();
      for (int64_t i = 0; i < batch; ++i) {
        batch_segments_.push_back({i, i * stride_a, i * stride_c, m});
      }
      if (SegmentGemmSupports(shape, batch_segments_)) {
        return LaunchSegmentGemm(shape, batch_segments_, stream);
      }
    }
  }
  if (g.row_invariant && m > kRowInvariantPlanRows) {
    // cuBLASLt's algorithm for kRowInvariantPlanRows rows need not run at a larger m: run
    // chunks of at most that many rows, each with that algorithm.
    for (int64_t r0 = 0; r0 < m; r0 += kRowInvariantPlanRows) {
      const int64_t rows = std::min(kRowInvariantPlanRows, m - r0);
      MOE_RETURN_IF_ERROR(Run(op, g, rows, Offset(a, g.trans_a ? r0 : r0 * g.lda, g.a_dtype), b,
                              ldb, b_is_nk, Offset(c, r0 * g.ldc, g.c_dtype), batch, stride_a,
                              stride_b, stride_c, stream));
    }
    return absl::OkStatus();
  }
  const int64_t ab_size = DTypeSize(g.a_dtype);
  GemmPlanKey key;
  key.ab_dtype = g.a_dtype;
  key.trans_a = g.trans_a;
  key.b_is_nk = b_is_nk;
  key.m = m;
  key.n = g.n;
  key.k = g.k;
  key.lda = g.lda;
  key.ldb = ldb;
  key.batch = batch;
  key.stride_a = stride_a;
  key.stride_b = stride_b;
  key.align_a = AlignmentOf(a, g.lda * ab_size, stride_a * ab_size);
  key.align_b = AlignmentOf(b, ldb * ab_size, stride_b * ab_size);
  key.row_invariant = g.row_invariant;
  if (!(g.a_dtype == DType::kF32 && g.c_dtype == DType::kBF16)) {
    key.c_dtype = g.c_dtype;
    key.ldc = g.ldc;
    key.stride_c = stride_c;
    key.align_c = AlignmentOf(c, g.ldc * c_size, stride_c * c_size);
    return Matmul(op, key, a, b, c, stream);
  }
  // No cuBLASLt kernel reads f32 and writes bf16: a dense fp32 C, then one rounding.
  const int64_t scratch_stride = batch == 1 ? 0 : m * g.n;
  MOE_ASSIGN_OR_RETURN(float* scratch,
                       Scratch(static_cast<size_t>(batch * m * g.n) * sizeof(float), stream));
  key.c_dtype = DType::kF32;
  key.ldc = g.n;
  key.stride_c = scratch_stride;
  key.align_c = AlignmentOf(scratch, g.n * 4, scratch_stride * 4);
  MOE_RETURN_IF_ERROR(Matmul(op, key, a, b, scratch, stream));
  return LaunchRoundF32ToBf16(scratch, g.n, m * g.n, c, g.ldc, stride_c, m, g.n, batch, stream);
}

absl::Status CublasLtGemm::Matmul(absl::string_view op, const GemmPlanKey& key, const void* a,
                                  const void* b, void* c, cudaStream_t stream) {
  MOE_ASSIGN_OR_RETURN(const Plan* plan, GetPlan(op, key));
  if (plan->matrix_by_matrix) {
    const GemmPlanKey one = Single(key);
    for (int64_t i = 0; i < key.batch; ++i) {
      MOE_RETURN_IF_ERROR(Matmul(op, one, Offset(a, i * key.stride_a, key.ab_dtype),
                                 Offset(b, i * key.stride_b, key.ab_dtype),
                                 Offset(c, i * key.stride_c, key.c_dtype), stream));
    }
    return absl::OkStatus();
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  MOE_CUBLASLT_RETURN_IF_ERROR(
      cublasLtMatmul(handle_, plan->desc, &alpha, b, plan->a_layout, a, plan->b_layout, &beta, c,
                     plan->c_layout, c, plan->c_layout, &plan->algo, workspace_, workspace_bytes_,
                     stream),
      What(op, key));
  return absl::OkStatus();
}

absl::StatusOr<const CublasLtGemm::Plan*> CublasLtGemm::GetPlan(absl::string_view op,
                                                                const GemmPlanKey& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second->lru);
    return it->second->plan.get();
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Plan> plan, MakePlan(op, key));
  while (plans_.size() >= max_plans_ && !lru_.empty()) {
    plans_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(key);
  auto entry = std::make_unique<Entry>();
  entry->plan = std::move(plan);
  entry->lru = lru_.begin();
  const Plan* result = entry->plan.get();
  plans_.emplace(key, std::move(entry));
  return result;
}

absl::StatusOr<std::unique_ptr<CublasLtGemm::Plan>> CublasLtGemm::MakePlan(absl::string_view op,
                                                                           const GemmPlanKey& key) {
  const std::string what = What(op, key);
  auto plan = std::make_unique<Plan>();
  MOE_CUBLASLT_RETURN_IF_ERROR(
      cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), what);
  // C^T[n, m] = op(B)^T[n, k] * op(A)^T[k, m] in column-major terms.
  MOE_CUBLASLT_RETURN_IF_ERROR(
      SetDesc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, key.b_is_nk ? CUBLAS_OP_T : CUBLAS_OP_N),
      what);
  MOE_CUBLASLT_RETURN_IF_ERROR(
      SetDesc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N),
      what);
  MOE_RETURN_IF_ERROR(MakeLayout(&plan->a_layout, key.ab_dtype, key.b_is_nk ? key.k : key.n,
                                 key.b_is_nk ? key.n : key.k, key.ldb, key.batch, key.stride_b,
                                 what));
  MOE_RETURN_IF_ERROR(MakeLayout(&plan->b_layout, key.ab_dtype, key.trans_a ? key.m : key.k,
                                 key.trans_a ? key.k : key.m, key.lda, key.batch, key.stride_a,
                                 what));
  MOE_RETURN_IF_ERROR(MakeLayout(&plan->c_layout, key.c_dtype, key.n, key.m, key.ldc, key.batch,
                                 key.stride_c, what));

  if (key.batch > 1 || (key.row_invariant && key.m != kRowInvariantPlanRows)) {
    // The per-matrix algorithm, so that batched and one-by-one GEMMs give the same bits; for a
    // row-invariant GEMM, the algorithm of kRowInvariantPlanRows rows, so every m runs the same
    // kernel.
    GemmPlanKey source = Single(key);
    if (key.row_invariant) source.m = kRowInvariantPlanRows;
    MOE_ASSIGN_OR_RETURN(const Plan* single, GetPlan(op, source));
    plan->algo = single->algo;
    cublasLtMatmulHeuristicResult_t check = {};
    const cublasStatus_t status =
        cublasLtMatmulAlgoCheck(handle_, plan->desc, plan->a_layout, plan->b_layout, plan->c_layout,
                                plan->c_layout, &plan->algo, &check);
    plan->matrix_by_matrix =
        status != CUBLAS_STATUS_SUCCESS || check.workspaceSize > workspace_bytes_;
    if (plan->matrix_by_matrix && key.batch == 1) {
      return absl::InternalError(absl::StrCat(what, ": the row-invariant algorithm (the one for ",
                                              kRowInvariantPlanRows,
                                              " rows) does not run at this m"));
    }
    return plan;
  }

  Preference pref;
  MOE_CUBLASLT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(pref.out()), what);
  MOE_CUBLASLT_RETURN_IF_ERROR(SetPref(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       static_cast<uint64_t>(workspace_bytes_)),
                               what);
  // NONE (0) always qualifies; COMPUTE_TYPE is split-K reduced in fp32 by a separate kernel.
  MOE_CUBLASLT_RETURN_IF_ERROR(
      SetPref(pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
              static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)),
      what);
  MOE_CUBLASLT_RETURN_IF_ERROR(SetPref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                       static_cast<uint32_t>(key.align_b)),
                               what);
  MOE_CUBLASLT_RETURN_IF_ERROR(SetPref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                       static_cast<uint32_t>(key.align_a)),
                               what);
  MOE_CUBLASLT_RETURN_IF_ERROR(SetPref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                       static_cast<uint32_t>(key.align_c)),
                               what);
  MOE_CUBLASLT_RETURN_IF_ERROR(SetPref(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                       static_cast<uint32_t>(key.align_c)),
                               what);

  cublasLtMatmulHeuristicResult_t results[kHeuristicResults] = {};
  int returned = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan->desc, plan->a_layout, plan->b_layout, plan->c_layout, plan->c_layout,
      pref.get(), kHeuristicResults, results, &returned);
  if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
    return CublasLtStatus(status, "cublasLtMatmulAlgoGetHeuristic", what, __FILE__, __LINE__);
  }
  for (int i = 0; status == CUBLAS_STATUS_SUCCESS && i < returned; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS && results[i].workspaceSize <= workspace_bytes_ &&
        SingleRounding(results[i].algo)) {
      plan->algo = results[i].algo;
      return plan;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what,
      ": cuBLASLt has no deterministic single-rounding algorithm for this shape and these "
      "alignments (16-byte aligned pointers, strides and leading dims, i.e. multiples of 8 "
      "bf16 or 4 f32 elements, are always supported)"));
}

absl::StatusOr<std::string> CublasLtGemm::DescribePlan(const GemmPlanKey& key) {
  MOE_ASSIGN_OR_RETURN(const Plan* plan, GetPlan("describe_plan", key));
  const cublasLtMatmulAlgo_t algo = plan->algo;
  const bool one_call = !plan->matrix_by_matrix;
  std::string out = "algo";
  struct Field {
    const char* name;
    cublasLtMatmulAlgoConfigAttributes_t attr;
    size_t size;  // bytes, as cublasLt.h documents the attribute
  };
  for (const Field& f :
       {Field{"", CUBLASLT_ALGO_CONFIG_ID, 4}, Field{" tile", CUBLASLT_ALGO_CONFIG_TILE_ID, 4},
        Field{" stages", CUBLASLT_ALGO_CONFIG_STAGES_ID, 4},
        Field{" split_k", CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4},
        Field{" reduction", CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, 4},
        Field{" cluster", CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2}}) {
    uint32_t value = 0;  // little endian: a 2-byte attribute fills the low half
    size_t written = 0;
    MOE_CUBLASLT_RETURN_IF_ERROR(
        cublasLtMatmulAlgoConfigGetAttribute(&algo, f.attr, &value, f.size, &written),
        What("describe_plan", key));
    absl::StrAppend(&out, f.name, " ", value);
  }
  absl::StrAppend(&out, one_call ? ", one call" : ", matrix by matrix");
  return out;
}

absl::StatusOr<float*> CublasLtGemm::Scratch(size_t bytes, cudaStream_t stream) {
  if (bytes <= scratch_bytes_) return static_cast<float*>(scratch_);
  // The old buffer may still be read by enqueued work (or by a recorded graph: growing it
  // while capturing is refused).
  MOE_RETURN_IF_ERROR(RefuseWhileCapturing(stream, "growing the f32 scratch"));
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (scratch_ != nullptr) MOE_CUDA_RETURN_IF_ERROR(cudaFree(scratch_));
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  if (cudaMalloc(&scratch_, bytes) != cudaSuccess) {
    scratch_ = nullptr;
    cudaGetLastError();  // reported here, not by the next CUDA call
    return absl::ResourceExhaustedError(absl::StrCat("cublaslt gemm: cannot allocate ", bytes,
                                                     " bytes of fp32 scratch for f32 -> bf16"));
  }
  scratch_bytes_ = bytes;
  return static_cast<float*>(scratch_);
}

}  // namespace moe::cuda
