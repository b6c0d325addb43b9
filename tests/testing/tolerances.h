// Every tolerance the tests use, in one table, stated as MaxRelError (error relative to the
// largest reference magnitude) against a float64 reference computed from the same
// (dtype-rounded) inputs.
#ifndef MOE_TESTS_TESTING_TOLERANCES_H_
#define MOE_TESTS_TESTING_TOLERANCES_H_

#include "kernels/dtype.h"

namespace moe::testing {

// One op (a GEMM, a combine, an activation): fp32 accumulation, one final rounding.
constexpr double kOpTolF32 = 2e-5;
constexpr double kOpTolBf16 = 1e-2;  // bf16 output rounding (2^-8 relative) plus accumulation

// The whole MoE block: several bf16 roundings in a chain (gate/up, silu, product, down, sum).
constexpr double kBlockTolF32 = 1e-4;
constexpr double kBlockTolBf16 = 3e-2;

inline double OpTol(DType t) { return t == DType::kBF16 ? kOpTolBf16 : kOpTolF32; }
inline double BlockTol(DType t) { return t == DType::kBF16 ? kBlockTolBf16 : kBlockTolF32; }

}  // namespace moe::testing

#endif  // MOE_TESTS_TESTING_TOLERANCES_H_
