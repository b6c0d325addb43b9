// Argument validation for every op, done once here so backends only compute.
#include "kernels/backend.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

absl::Status Invalid(absl::string_view op, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

absl::Status CheckNonNegative(absl::string_view op, absl::string_view field, int64_t v) {
  if (v < 0) return Invalid(op, absl::StrCat(field, "=", v, " is negative"));
  return absl::OkStatus();
}

absl::Status CheckPositive(absl::string_view op, absl::string_view field, int64_t v) {
  if (v <= 0) return Invalid(op, absl::StrCat(field, "=", v, " must be positive"));
  return absl::OkStatus();
}

absl::Status CheckPointer(absl::string_view op, absl::string_view field, const void* p) {
  if (p == nullptr) return Invalid(op, absl::StrCat(field, " is null"));
  return absl::OkStatus();
}

absl::Status CheckLd(absl::string_view op, absl::string_view field, int64_t ld, int64_t cols) {
  if (ld < cols)
    return Invalid(op, absl::StrCat(field, "=", ld, " is less than the row length ", cols));
  return absl::OkStatus();
}

// Elements from the first to one past the last of a rows x cols matrix with leading dim ld.
int64_t Span(int64_t rows, int64_t cols, int64_t ld) {
  return rows == 0 ? 0 : (rows - 1) * ld + cols;
}

bool IsFloat(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

absl::Status CheckGemmDtypes(absl::string_view op, const GemmArgs& g) {
  if (g.a_dtype != g.b_dtype) {
    return absl::UnimplementedError(absl::StrCat(op, ": a_dtype=", DTypeName(g.a_dtype),
                                                 " differs from b_dtype=", DTypeName(g.b_dtype)));
  }
  if (g.a_dtype != DType::kF32 && g.a_dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": a_dtype=", DTypeName(g.a_dtype), " (supported: f32, bf16)"));
  }
  if (g.c_dtype != DType::kF32 && g.c_dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": c_dtype=", DTypeName(g.c_dtype), " (supported: f32, bf16)"));
  }
  return absl::OkStatus();
}

// A GEMM's packed B (when set): made by `self`, k, n and dtype as packed, and the `count`
// matrices from packed_b_index on within the packed batch.
absl::Status CheckPackedB(const Backend* self, absl::string_view op, const GemmArgs& g,
                          int64_t count) {
  if (g.packed_b == nullptr) return absl::OkStatus();
  const PackedWeights& p = *g.packed_b;
  if (p.backend() != self) return Invalid(op, "packed_b was made by another backend");
  if (g.k != p.k()) return Invalid(op, absl::StrCat("k=", g.k, " differs from packed_b k=", p.k()));
  if (g.n != p.n()) return Invalid(op, absl::StrCat("n=", g.n, " differs from packed_b n=", p.n()));
  if (g.b_dtype != p.dtype()) {
    return Invalid(op, absl::StrCat("b_dtype=", DTypeName(g.b_dtype),
                                    " differs from packed_b dtype=", DTypeName(p.dtype())));
  }
  MOE_RETURN_IF_ERROR(CheckNonNegative(op, "packed_b_index", g.packed_b_index));
  if (g.packed_b_index > p.batch() - count) {
    return Invalid(op, absl::StrCat("packed_b_index=", g.packed_b_index, " + ", count,
                                    count == 1 ? " matrix" : " matrices",
                                    " exceeds packed_b batch=", p.batch()));
  }
  return absl::OkStatus();
}

// Shapes and leading dims of one GEMM; `m_known` is false for grouped GEMMs.
absl::Status CheckGemmShape(absl::string_view op, const GemmArgs& g, bool m_known) {
  if (m_known) {
    MOE_RETURN_IF_ERROR(CheckNonNegative(op, "m", g.m));
  }
  MOE_RETURN_IF_ERROR(CheckNonNegative(op, "n", g.n));
  MOE_RETURN_IF_ERROR(CheckNonNegative(op, "k", g.k));
  MOE_RETURN_IF_ERROR(CheckGemmDtypes(op, g));
  const int64_t a_cols = g.trans_a ? g.m : g.k;
  const int64_t b_cols = g.trans_b ? g.k : g.n;
  if (m_known || !g.trans_a) {
    MOE_RETURN_IF_ERROR(CheckLd(op, "lda", g.lda, m_known ? a_cols : g.k));
  }
  if (g.packed_b == nullptr) {
    MOE_RETURN_IF_ERROR(CheckLd(op, "ldb", g.ldb, b_cols));
  }
  MOE_RETURN_IF_ERROR(CheckLd(op, "ldc", g.ldc, g.n));
  return absl::OkStatus();
}

absl::Status CheckGemmPointers(absl::string_view op, const GemmArgs& g) {
  MOE_RETURN_IF_ERROR(CheckPointer(op, "a", g.a));
  if (g.packed_b == nullptr) {
    MOE_RETURN_IF_ERROR(CheckPointer(op, "b", g.b));
  }
  return CheckPointer(op, "c", g.c);
}

// The stride between B matrices: 0 (one matrix for all) or at least one matrix.
absl::Status CheckStrideB(absl::string_view op, const char* what, int64_t stride_b, int64_t k,
                          int64_t n, int64_t ldb, bool trans_b) {
  const int64_t b_span = Span(trans_b ? n : k, trans_b ? k : n, ldb);
  if (stride_b != 0 && stride_b < b_span) {
    return Invalid(op, absl::StrCat("stride_b=", stride_b, " is neither 0 nor at least one ", what,
                                    " (", b_span, " elements)"));
  }
  return absl::OkStatus();
}

absl::Status CheckF32OrBf16(absl::string_view op, DType t) {
  if (t != DType::kF32 && t != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": dtype=", DTypeName(t), " (supported: f32, bf16)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpGraph>> Backend::CaptureOps(
    const std::function<absl::Status()>& /*enqueue*/) {
  return absl::UnimplementedError(
      absl::StrCat(device().ToString(), ": this backend does not record op graphs"));
}

absl::StatusOr<std::unique_ptr<PackedWeights>> Backend::PackWeights(const PackWeightsArgs& args) {
  constexpr absl::string_view kOp = "pack_weights";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "batch", args.batch));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "k", args.k));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", args.n));
  if (args.dtype != DType::kF32 && args.dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dtype=", DTypeName(args.dtype), " (supported: f32, bf16)"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "ldb", args.ldb, args.trans_b ? args.k : args.n));
  if (args.batch > 0 && args.k > 0 && args.n > 0 && args.b != nullptr) {
    if (args.batch > 1) {
      MOE_RETURN_IF_ERROR(
          CheckStrideB(kOp, "matrix", args.stride_b, args.k, args.n, args.ldb, args.trans_b));
    }
  }
  return RunPackWeights(args);
}

absl::Status Backend::RepackWeights(PackedWeights* packed, int64_t index, const void* b,
                                    int64_t ldb) {
  constexpr absl::string_view kOp = "repack_weights";
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "packed", packed));
  if (packed->backend() != this) return Invalid(kOp, "packed was made by another backend");
  if (index < 0 || index >= packed->batch()) {
    return Invalid(kOp,
                   absl::StrCat("index=", index, " is outside [0, batch=", packed->batch(), ")"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "ldb", ldb, packed->trans_b() ? packed->k() : packed->n()));
  if (packed->k() == 0 || packed->n() == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "b", b));
  return RunRepackWeights(packed, index, b, ldb);
}

absl::Status Backend::UnpackWeights(const PackedWeights& packed, int64_t index, void* b,
                                    int64_t ldb) {
  constexpr absl::string_view kOp = "unpack_weights";
  if (packed.backend() != this) return Invalid(kOp, "packed was made by another backend");
  if (index < 0 || index >= packed.batch()) {
    return Invalid(kOp,
                   absl::StrCat("index=", index, " is outside [0, batch=", packed.batch(), ")"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "ldb", ldb, packed.trans_b() ? packed.k() : packed.n()));
  if (packed.k() == 0 || packed.n() == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "b", b));
  return RunUnpackWeights(packed, index, b, ldb);
}

absl::Status Backend::Gemm(const GemmArgs& args) {
  MOE_RETURN_IF_ERROR(CheckGemmShape("gemm", args, true));
  MOE_RETURN_IF_ERROR(CheckPackedB(this, "gemm", args, 1));
  if (args.m == 0 || args.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckGemmPointers("gemm", args));
  return RunGemm(args);
}

absl::Status Backend::BatchedGemm(const BatchedGemmArgs& args) {
  constexpr absl::string_view kOp = "batched_gemm";
  const GemmArgs& g = args.gemm;
  MOE_RETURN_IF_ERROR(CheckGemmShape(kOp, g, true));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "batch", args.batch));
  MOE_RETURN_IF_ERROR(CheckPackedB(this, kOp, g, args.batch));
  if (args.batch == 0 || g.m == 0 || g.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckGemmPointers(kOp, g));
  if (args.batch > 1) {
    // Output matrices may not overlap each other; inputs may also be shared (stride 0).
    const int64_t a_span = Span(g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda);
    const int64_t c_span = Span(g.m, g.n, g.ldc);
    if (args.stride_a != 0 && args.stride_a < a_span) {
      return Invalid(
          kOp, absl::StrCat("stride_a=", args.stride_a, " is neither 0 nor at least one matrix (",
                            a_span, " elements)"));
    }
    if (g.packed_b == nullptr) {
      MOE_RETURN_IF_ERROR(CheckStrideB(kOp, "matrix", args.stride_b, g.k, g.n, g.ldb, g.trans_b));
    }
    if (args.stride_c < c_span) {
      return Invalid(kOp, absl::StrCat("stride_c=", args.stride_c,
                                       " is less than one output matrix (", c_span, " elements)"));
    }
  }
  return RunBatchedGemm(args);
}

absl::Status Backend::GroupedGemm(const GroupedGemmArgs& args) {
  constexpr absl::string_view kOp = "grouped_gemm";
  const GemmArgs& g = args.gemm;
  if (g.trans_a) return Invalid(kOp, "trans_a must be false (A rows are segmented)");
  MOE_RETURN_IF_ERROR(CheckGemmShape(kOp, g, false));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "num_groups", args.num_groups));
  MOE_RETURN_IF_ERROR(CheckPackedB(this, kOp, g, args.num_groups));
  if (args.num_groups == 0) return absl::OkStatus();
  int64_t rows = 0;
  if (args.counts != nullptr) {
    // The counts are in backend memory: only their host-visible promise, m, is checked.
    if (args.offsets != nullptr) return Invalid(kOp, "offsets and counts are both set");
    MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "m", g.m));
    rows = g.m;
  } else {
    MOE_RETURN_IF_ERROR(CheckPointer(kOp, "offsets", args.offsets));
    if (args.offsets[0] != 0) {
      return Invalid(kOp, absl::StrCat("offsets[0]=", args.offsets[0], ", expected 0"));
    }
    for (int64_t i = 0; i < args.num_groups; ++i) {
      if (args.offsets[i + 1] < args.offsets[i]) {
        return Invalid(kOp, absl::StrCat("offsets[", i + 1, "]=", args.offsets[i + 1],
                                         " is less than offsets[", i, "]=", args.offsets[i]));
      }
    }
    rows = args.offsets[args.num_groups];
  }
  if (rows == 0 || g.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckGemmPointers(kOp, g));
  if (args.num_groups > 1 && g.packed_b == nullptr) {
    MOE_RETURN_IF_ERROR(
        CheckStrideB(kOp, "weight matrix", args.stride_b, g.k, g.n, g.ldb, g.trans_b));
  }
  return RunGroupedGemm(args);
}

absl::Status Backend::Router(const RouterArgs& a) {
  constexpr absl::string_view kOp = "router";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "tokens", a.tokens));
  if (a.num_experts <= 0)
    return Invalid(kOp, absl::StrCat("num_experts=", a.num_experts, " must be positive"));
  if (a.top_k <= 0) return Invalid(kOp, absl::StrCat("top_k=", a.top_k, " must be positive"));
  if (!a.force_balanced && a.top_k > a.num_experts) {
    return Invalid(kOp, absl::StrCat("top_k=", a.top_k, " exceeds num_experts=", a.num_experts));
  }
  if (a.num_groups <= 0)
    return Invalid(kOp, absl::StrCat("num_groups=", a.num_groups, " must be positive"));
  if (a.num_experts % a.num_groups != 0) {
    return Invalid(kOp, absl::StrCat("num_experts=", a.num_experts,
                                     " is not divisible by num_groups=", a.num_groups));
  }
  if (a.num_groups > 1) {
    if (a.num_experts / a.num_groups < 2) {
      return Invalid(kOp, absl::StrCat("num_experts / num_groups = ", a.num_experts / a.num_groups,
                                       " experts per group; group scores need at least 2"));
    }
    if (a.topk_groups <= 0 || a.topk_groups > a.num_groups) {
      return Invalid(kOp, absl::StrCat("topk_groups=", a.topk_groups,
                                       " is outside [1, num_groups=", a.num_groups, "]"));
    }
    if (!a.force_balanced && a.topk_groups * (a.num_experts / a.num_groups) < a.top_k) {
      return Invalid(kOp, absl::StrCat("topk_groups=", a.topk_groups, " groups of ",
                                       a.num_experts / a.num_groups,
                                       " experts hold fewer than top_k=", a.top_k, " experts"));
    }
  }
  if (!std::isfinite(a.route_scale)) {
    return Invalid(kOp, absl::StrCat("route_scale=", a.route_scale, " is not finite"));
  }
  if (a.tokens == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "logits", a.logits));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "weights", a.weights));
  return RunRouter(a);
}

absl::Status Backend::Bincount(const BincountArgs& a) {
  constexpr absl::string_view kOp = "bincount";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", a.n));
  if (a.num_bins <= 0)
    return Invalid(kOp, absl::StrCat("num_bins=", a.num_bins, " must be positive"));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "counts", a.counts));
  if (a.n > 0) {
    MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  }
  return RunBincount(a);
}

absl::Status Backend::ExpertOrder(const ExpertOrderArgs& a) {
  constexpr absl::string_view kOp = "expert_order";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", a.n));
  if (a.n > INT32_MAX)
    return Invalid(kOp, absl::StrCat("n=", a.n, " exceeds the int32 row index limit ", INT32_MAX));
  if (a.num_experts <= 0)
    return Invalid(kOp, absl::StrCat("num_experts=", a.num_experts, " must be positive"));
  if (a.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "counts", a.counts));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "sorted_slots", a.sorted_slots));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "slot_to_row", a.slot_to_row));
  return RunExpertOrder(a);
}

absl::Status Backend::GatherRows(const GatherRowsArgs& a) {
  constexpr absl::string_view kOp = "gather_rows";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "cols", a.cols));
  if (!IsFloat(a.dtype))
    return absl::UnimplementedError(absl::StrCat(kOp, ": dtype=", DTypeName(a.dtype)));
  if (a.index_divisor <= 0)
    return Invalid(kOp, absl::StrCat("index_divisor=", a.index_divisor, " must be positive"));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "src_ld", a.src_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "dst_ld", a.dst_ld, a.cols));
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "src", a.src));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "index", a.index));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "dst", a.dst));
  return RunGatherRows(a);
}

absl::Status Backend::SwiGlu(const SwiGluArgs& a) {
  constexpr absl::string_view kOp = "swiglu";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "inter", a.inter));
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dtype=", DTypeName(a.dtype), " (supported: f32, bf16)"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "gate_up_ld", a.gate_up_ld, 2 * a.inter));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "out_ld", a.out_ld, a.inter));
  if (a.rows == 0 || a.inter == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "gate_up", a.gate_up));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunSwiGlu(a);
}

absl::Status Backend::Combine(const CombineArgs& a) {
  constexpr absl::string_view kOp = "combine";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "tokens", a.tokens));
  if (a.top_k <= 0) return Invalid(kOp, absl::StrCat("top_k=", a.top_k, " must be positive"));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "cols", a.cols));
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dtype=", DTypeName(a.dtype), " (supported: f32, bf16)"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "expert_out_ld", a.expert_out_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "out_ld", a.out_ld, a.cols));
  if (a.tokens == 0 || a.cols == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "expert_out", a.expert_out));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "slot_to_row", a.slot_to_row));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunCombine(a);
}

absl::Status Backend::ScaleRows(const ScaleRowsArgs& a) {
  constexpr absl::string_view kOp = "scale_rows";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "cols", a.cols));
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dtype=", DTypeName(a.dtype), " (supported: f32, bf16)"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "src_ld", a.src_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "dst_ld", a.dst_ld, a.cols));
  if (a.src == a.dst && a.src_ld != a.dst_ld) {
    return Invalid(kOp, absl::StrCat("in place with src_ld=", a.src_ld, " != dst_ld=", a.dst_ld));
  }
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "src", a.src));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "scale", a.scale));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "dst", a.dst));
  return RunScaleRows(a);
}

absl::Status Backend::Add(const AddArgs& a) {
  constexpr absl::string_view kOp = "add";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", a.n));
  if (a.dtype != DType::kF32 && a.dtype != DType::kBF16) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dtype=", DTypeName(a.dtype), " (supported: f32, bf16)"));
  }
  if (a.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "a", a.a));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "b", a.b));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunAdd(a);
}

absl::Status Backend::Cast(const CastArgs& a) {
  constexpr absl::string_view kOp = "cast";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", a.n));
  if (!IsFloat(a.src_dtype) || !IsFloat(a.dst_dtype)) {
    return absl::UnimplementedError(absl::StrCat(kOp, ": ", DTypeName(a.src_dtype), " -> ",
                                                 DTypeName(a.dst_dtype),
                                                 " (supported: f32, bf16, f16)"));
  }
  if (a.n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "src", a.src));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "dst", a.dst));
  return RunCast(a);
}

absl::Status Backend::RmsNorm(const RmsNormArgs& a) {
  constexpr absl::string_view kOp = "rmsnorm";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "cols", a.cols));
  MOE_RETURN_IF_ERROR(CheckF32OrBf16(kOp, a.dtype));
  if (!(a.eps >= 0.0f) || std::isinf(a.eps)) {
    return Invalid(kOp, absl::StrCat("eps=", a.eps, " must be finite and >= 0"));
  }
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "x_ld", a.x_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "out_ld", a.out_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows_per_group", a.rows_per_group));
  if (a.rows_per_group > 0 && (a.group_ld < a.rows_per_group * a.x_ld ||
                               a.group_ld < a.rows_per_group * a.out_ld)) {
    return Invalid(kOp, absl::StrCat("group_ld=", a.group_ld, " is less than rows_per_group=",
                                     a.rows_per_group, " rows of x_ld=", a.x_ld, " / out_ld=",
                                     a.out_ld));
  }
  if (a.x == a.out && a.x_ld != a.out_ld) {
    return Invalid(kOp, absl::StrCat("in place with x_ld=", a.x_ld, " != out_ld=", a.out_ld));
  }
  if (a.rows == 0 || a.cols == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "x", a.x));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "weight", a.weight));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunRmsNorm(a);
}

absl::Status Backend::Rope(const RopeArgs& a) {
  constexpr absl::string_view kOp = "rope";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "heads", a.heads));
  MOE_RETURN_IF_ERROR(CheckF32OrBf16(kOp, a.dtype));
  if (a.style != RopeStyle::kHalf && a.style != RopeStyle::kInterleaved) {
    return Invalid(kOp, absl::StrCat("style=", static_cast<int>(a.style), " is not a RopeStyle"));
  }
  if (a.rotary_dim < 2 || a.rotary_dim % 2 != 0) {
    return Invalid(kOp, absl::StrCat("rotary_dim=", a.rotary_dim, " must be even and >= 2"));
  }
  if (a.rotary_dim > a.head_dim) {
    return Invalid(kOp,
                   absl::StrCat("rotary_dim=", a.rotary_dim, " exceeds head_dim=", a.head_dim));
  }
  if (a.max_positions <= 0) {
    return Invalid(kOp, absl::StrCat("max_positions=", a.max_positions, " must be positive"));
  }
  if (a.heads > 0) {
    MOE_RETURN_IF_ERROR(CheckLd(kOp, "ld", a.ld, (a.heads - 1) * a.head_dim + a.rotary_dim));
  }
  if (a.rows == 0 || a.heads == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "x", a.x));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "positions", a.positions));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "cos", a.cos));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "sin", a.sin));
  return RunRope(a);
}

absl::Status Backend::Embedding(const EmbeddingArgs& a) {
  constexpr absl::string_view kOp = "embedding";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "tokens", a.tokens));
  if (a.vocab <= 0) return Invalid(kOp, absl::StrCat("vocab=", a.vocab, " must be positive"));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "cols", a.cols));
  MOE_RETURN_IF_ERROR(CheckF32OrBf16(kOp, a.dtype));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "table_ld", a.table_ld, a.cols));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "out_ld", a.out_ld, a.cols));
  if (a.tokens == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  if (a.cols == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "table", a.table));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunEmbedding(a);
}

absl::Status Backend::KvWrite(const KvWriteArgs& a) {
  constexpr absl::string_view kOp = "kv_write";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "tokens", a.tokens));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "kv_heads", a.kv_heads));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "head_dim", a.head_dim));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "num_blocks", a.num_blocks));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "block_size", a.block_size));
  MOE_RETURN_IF_ERROR(CheckF32OrBf16(kOp, a.dtype));
  const int64_t row = a.kv_heads * a.head_dim;
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "k_ld", a.k_ld, row));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "v_ld", a.v_ld, row));
  if (a.tokens == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "k", a.k));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "v", a.v));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "slot_mapping", a.slot_mapping));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "k_cache", a.k_cache));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "v_cache", a.v_cache));
  return RunKvWrite(a);
}

absl::Status Backend::Attention(const AttentionArgs& a) {
  constexpr absl::string_view kOp = "attention";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "tokens", a.tokens));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "heads", a.heads));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "kv_heads", a.kv_heads));
  if (a.heads % a.kv_heads != 0) {
    return Invalid(kOp,
                   absl::StrCat("heads=", a.heads, " is not a multiple of kv_heads=", a.kv_heads));
  }
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "head_dim", a.head_dim));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "num_blocks", a.num_blocks));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "block_size", a.block_size));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "num_seqs", a.num_seqs));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "max_blocks_per_seq", a.max_blocks_per_seq));
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "sliding_window", a.sliding_window));
  if (!std::isfinite(a.scale)) {
    return Invalid(kOp, absl::StrCat("scale=", a.scale, " must be finite"));
  }
  MOE_RETURN_IF_ERROR(CheckF32OrBf16(kOp, a.dtype));
  const int64_t row = a.heads * a.head_dim;
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "q_ld", a.q_ld, row));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "out_ld", a.out_ld, row));
  if (a.tokens == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "q", a.q));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "k_cache", a.k_cache));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "v_cache", a.v_cache));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "block_tables", a.block_tables));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "seq_ids", a.seq_ids));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "positions", a.positions));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "out", a.out));
  return RunAttention(a);
}

absl::Status CheckSamplingParams(const SamplingParams& p, absl::string_view name) {
  // %.9g prints every float exactly enough to tell 1 from the next float above it.
  const auto bad = [&](absl::string_view field, float value, absl::string_view rule) {
    return absl::InvalidArgumentError(absl::StrFormat("%s.%s=%.9g %s", name, field, value, rule));
  };
  // Written so that NaN fails every check.
  if (!(p.temperature >= 0.0f && std::isfinite(p.temperature))) {
    return bad("temperature", p.temperature, "must be finite and >= 0");
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".top_k=", p.top_k, " is negative"));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return bad("top_p", p.top_p, "is outside (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return bad("min_p", p.min_p, "is outside [0, 1]");
  if (!(p.repetition_penalty > 0.0f && std::isfinite(p.repetition_penalty))) {
    return bad("repetition_penalty", p.repetition_penalty, "must be finite and > 0");
  }
  return absl::OkStatus();
}

absl::Status Backend::Sample(const SampleArgs& a) {
  constexpr absl::string_view kOp = "sample";
  MOE_RETURN_IF_ERROR(CheckNonNegative(kOp, "rows", a.rows));
  MOE_RETURN_IF_ERROR(CheckPositive(kOp, "vocab", a.vocab));
  MOE_RETURN_IF_ERROR(CheckLd(kOp, "ld", a.ld, a.vocab));
  if (a.rows == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "logits", a.logits));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "params", a.params));
  MOE_RETURN_IF_ERROR(CheckPointer(kOp, "ids", a.ids));
  for (int64_t r = 0; r < a.rows; ++r) {
    MOE_RETURN_IF_ERROR(CheckSamplingParams(a.params[r], absl::StrCat(kOp, ": params[", r, "]")));
  }
  if (a.seen_offsets != nullptr) {
    if (a.seen_offsets[0] != 0) {
      return Invalid(kOp, absl::StrCat("seen_offsets[0]=", a.seen_offsets[0], " is not 0"));
    }
    for (int64_t r = 0; r < a.rows; ++r) {
      if (a.seen_offsets[r + 1] < a.seen_offsets[r]) {
        return Invalid(kOp,
                       absl::StrCat("seen_offsets[", r + 1, "]=", a.seen_offsets[r + 1],
                                    " is less than seen_offsets[", r, "]=", a.seen_offsets[r]));
      }
    }
    if (a.seen_offsets[a.rows] > 0) MOE_RETURN_IF_ERROR(CheckPointer(kOp, "seen_ids", a.seen_ids));
    for (int64_t i = 0; i < a.seen_offsets[a.rows]; ++i) {
      if (a.seen_ids[i] < 0 || a.seen_ids[i] >= a.vocab) {
        return Invalid(kOp, absl::StrCat("seen_ids[", i, "]=", a.seen_ids[i],
                                         " is outside [0, vocab=", a.vocab, ")"));
      }
    }
  }
  const size_t need = SampleWorkspaceBytes(a.rows, a.vocab);
  if (a.workspace_bytes < need) {
    return Invalid(kOp, absl::StrCat("workspace_bytes=", a.workspace_bytes, " is less than the ",
                                     need, " bytes needed for rows=", a.rows, ", vocab=", a.vocab));
  }
  if (need > 0 && a.workspace == nullptr) {
    return Invalid(kOp, absl::StrCat("workspace is null; ", need,
                                     " bytes are needed for rows=", a.rows, ", vocab=", a.vocab));
  }
  return RunSample(a);
}

}  // namespace moe
